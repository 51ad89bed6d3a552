"""The environments' exact pins agree with pyproject.toml's ranges and with each other (offline)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.environments.pins_loader import load_pins

REPO_ROOT = Path(__file__).resolve().parents[2]
pins = load_pins()


def test_committed_pins_agree_with_pyproject_and_each_other():
    assert pins.check_agreement() == []


def test_every_environment_pins_the_whole_stack():
    gpu = pins.environment_pins(pins.ENVIRONMENTS["train-gpu"])
    cpu = pins.environment_pins(pins.ENVIRONMENTS["cpu"])
    for name in ["torch", "transformers", "peft", "trl", "accelerate", "datasets", "bitsandbytes", "deepspeed",
                 "mlflow", "azureml-mlflow", "azureml-inference-server-http"]:
        assert name in gpu, name
    assert "deepspeed" not in cpu and "bitsandbytes" not in cpu
    assert "flash-attn" not in gpu  # left out: no prebuilt wheel for torch 2.13 + CUDA 13.0 (see the Dockerfile)
    shared = set(gpu) & set(cpu)
    assert {n: gpu[n].version for n in shared} == {n: cpu[n].version for n in shared}


def test_rft_gpu_pins_the_vllm_the_refusals_name_and_train_gpu_none():
    """use_vllm's refusals send GRPO to rft-gpu's vllm 0.30.0, and the pipeline runs grpo's Fine-Tune there:
    the pin, the refusal text and the pipeline's choice of environment must move together."""
    from maap_finetune.training.environment import Environment
    from maap_finetune.training.plan import RFT_ENVIRONMENT, VLLM_FITS, vllm_problem
    from pipelines.definition.environments import FINETUNE_ENVIRONMENT_BY_METHOD

    rft = pins.environment_pins(pins.ENVIRONMENTS[RFT_ENVIRONMENT])
    assert str(rft["vllm"].version) == VLLM_FITS
    assert FINETUNE_ENVIRONMENT_BY_METHOD == {"grpo": RFT_ENVIRONMENT}
    for name in set(pins.ENVIRONMENTS) - {RFT_ENVIRONMENT}:
        assert "vllm" not in pins.environment_pins(pins.ENVIRONMENTS[name]), name
    notes = (pins.ENVIRONMENTS["train-gpu"].context / "requirements.txt").read_text()
    assert "ResolutionImpossible" in notes and f"rft-gpu, which pins vllm {VLLM_FITS}" in notes
    gpu = Environment(cuda=True, bf16_supported=True, bitsandbytes=False, deepspeed=False, flash_attn=False)
    assert f"use the {RFT_ENVIRONMENT} environment, which pins vllm {VLLM_FITS}" in vllm_problem(gpu)


def test_rft_gpu_is_train_gpus_stack_plus_vllm_without_the_inference_server():
    """Same pins for everything both hold; rft-gpu drops only the server and adds only vllm."""
    gpu = pins.environment_pins(pins.ENVIRONMENTS["train-gpu"])
    rft = pins.environment_pins(pins.ENVIRONMENTS["rft-gpu"])
    assert set(gpu) - set(rft) == {"azureml-inference-server-http"}
    assert set(rft) - set(gpu) == {"vllm"}
    assert {n: rft[n].version for n in set(gpu) & set(rft)} == {n: gpu[n].version for n in set(gpu) & set(rft)}
    gpu_yaml, rft_yaml = (pins.load_environment_yaml(pins.ENVIRONMENTS[n]) for n in ("train-gpu", "rft-gpu"))
    assert rft_yaml["tags"] == {**gpu_yaml["tags"], "vllm": str(rft["vllm"].version)}
    images = [[image for _, image in pins.dockerfile_base_images(pins.ENVIRONMENTS[n])] for n in ("train-gpu", "rft-gpu")]
    assert images[0] == images[1]


@pytest.mark.parametrize("name", sorted(pins.ENVIRONMENTS))
def test_environment_yaml_loads_with_explicit_version(name):
    from azure.ai.ml import load_environment

    env = load_environment(REPO_ROOT / "environments" / name / "environment.yaml")
    assert env.name.startswith("maap-finetune-")
    assert env.version == "0.1.0"
    assert env.build is not None and Path(env.build.path).name == "context"
    assert (REPO_ROOT / "environments" / name / "context" / "Dockerfile").exists()


def test_components_reference_existing_environments():
    import yaml

    for spec_path in sorted((REPO_ROOT / "components").glob("*/spec.yaml")):
        ref = yaml.safe_load(spec_path.read_text())["environment"]
        assert ref.startswith("file:"), f"{spec_path}: {ref}"
        target = (spec_path.parent / ref[len("file:"):]).resolve()
        assert target.exists(), f"{spec_path}: environment {ref} does not exist"
        assert target.parent.parent == REPO_ROOT / "environments"


# --- the checker itself catches each kind of drift -------------------------------------------


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A copy of environments/ and pyproject.toml the checker reads instead of the real ones."""
    import shutil

    root = tmp_path / "repo"
    shutil.copytree(REPO_ROOT / "environments", root / "environments", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "pyproject.toml", root / "pyproject.toml")
    monkeypatch.setattr(pins, "ENV_DIR", root / "environments")
    monkeypatch.setattr(pins, "REPO_ROOT", root)
    monkeypatch.setattr(pins, "PYPROJECT", root / "pyproject.toml")
    assert pins.check_agreement() == []
    return root


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))


def test_pin_outside_project_range_is_reported_with_file_and_line(sandbox):
    req = sandbox / "environments/train-gpu/context/requirements.txt"
    _edit(req, "peft==0.21.2", "peft==0.22.0")
    _edit(sandbox / "environments/cpu/context/requirements.txt", "peft==0.21.2", "peft==0.22.0")
    problems = pins.check_agreement()
    assert any("requirements.txt:" in p and "peft==0.22.0 is outside pyproject.toml's range" in p for p in problems), problems


def test_drift_between_environments_is_reported(sandbox):
    _edit(sandbox / "environments/cpu/context/requirements.txt", "transformers==5.24.0", "transformers==5.23.0")
    problems = pins.check_agreement()
    assert any("transformers==5.23.0 disagrees with" in p for p in problems), problems


def test_missing_project_dependency_is_reported(sandbox):
    _edit(sandbox / "environments/cpu/context/requirements.txt", "pyyaml==6.0.4\n", "")
    problems = pins.check_agreement()
    assert any("environments/cpu" in p and "pins pyyaml" in p for p in problems), problems


def test_range_or_unknown_package_is_rejected(sandbox):
    req = sandbox / "environments/cpu/context/requirements.txt"
    req.write_text(req.read_text() + "numpy>=1\n")
    problems = pins.check_agreement()
    assert any("must be an exact pin" in p for p in problems), problems
    req.write_text(req.read_text().replace("numpy>=1\n", "numpy==2.0.0\n"))
    problems = pins.check_agreement()
    assert any("numpy==2.0.0 is not a project dependency" in p for p in problems), problems


def test_tag_and_image_and_python_drift_are_reported(sandbox):
    _edit(sandbox / "environments/train-gpu/environment.yaml", 'torch: "2.13.0"', 'torch: "2.9.0"')
    _edit(sandbox / "environments/cpu/context/Dockerfile", "openmpi5.0-ubuntu24.04:20260715.v1", "openmpi5.0-ubuntu24.04:latest")
    _edit(sandbox / "environments/cpu/context/Dockerfile", "python=3.11", "python=3.12")
    _edit(sandbox / "environments/cpu/environment.yaml", 'version: "0.1.0"', "version: latest")
    problems = pins.check_agreement()
    assert any("tag torch=2.9.0 disagrees" in p for p in problems), problems
    assert any("must be pinned by tag" in p for p in problems), problems
    assert any("tag python='3.11' but the Dockerfile creates python='3.12'" in p for p in problems), problems
    assert any("explicit semver" in p for p in problems), problems


def test_pyproject_range_change_is_caught(sandbox):
    _edit(sandbox / "pyproject.toml", '"torch>=2.4,<2.15"', '"torch>=2.14,<2.15"')
    problems = pins.check_agreement()
    assert sum("torch==2.13.0 is outside pyproject.toml's range" in p for p in problems) == len(pins.ENVIRONMENTS), problems


@pytest.mark.parametrize("name", sorted(pins.ENVIRONMENTS))
def test_conda_uses_conda_forge_only(name):
    """Default channels need the Anaconda terms of service accepted; a non-interactive build cannot."""
    lines = [line for line in (REPO_ROOT / "environments" / name / "context" / "Dockerfile").read_text().splitlines()
             if "conda create" in line or "conda install" in line]
    assert lines, name
    for line in lines:
        assert "-c conda-forge --override-channels" in line, line
