"""The submit CLI against the autospecced MLClient of tests/azure_fakes.py (no network): the job it
submits and every error path."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import yaml

from pipelines import azure_ml, submit
from pipelines.definition.inputs import SAMPLE_DATA
from pipelines.local import summary
from tests.azure_fakes import patch_azure, rest_entity, rest_payload
from tests.helpers import assert_one_error

PHI3 = "model_name=microsoft/Phi-3-mini-4k-instruct"


@pytest.fixture
def azure(monkeypatch):
    """An autospecced MLClient (tests/azure_fakes.py) where submit.py imports it: two clusters and a compute
    instance, and a pipeline job as the service returns it on creation (all from recorded REST payloads)."""
    computes = {name: rest_entity("compute", f"compute_{name}") for name in ("gpu-cluster", "cpu-cluster", "my-ci")}

    def get(name):
        from azure.core.exceptions import ResourceNotFoundError

        if name not in computes:
            raise ResourceNotFoundError(f"Compute {name} not found")
        return computes[name]

    fake = patch_azure(monkeypatch)
    fake.client.compute.get.side_effect = get
    fake.client.compute.list.side_effect = lambda **kwargs: list(computes.values())
    fake.client.jobs.create_or_update.return_value = rest_entity("job", "job_pipeline_created")
    for variables in azure_ml.WORKSPACE_ENV.values():
        for variable in variables:
            monkeypatch.delenv(variable, raising=False)
    return SimpleNamespace(client=fake.client, cls=fake.cls, credential=fake.credential, computes=computes)


def submitted_job(azure):
    assert azure.client.jobs.create_or_update.call_count == 1
    return azure.client.jobs.create_or_update.call_args.args[0]


def test_submit_sends_the_pipeline_with_compute_distribution_and_inputs(azure, capsys):
    rc = submit.main([
        "--compute", "gpu-cluster", "--cpu-compute", "cpu-cluster",
        "--instance-count", "2", "--process-count-per-instance", "4",
        "--sample-data", "--set", PHI3, "--set", "lora_r=8", "--set", "learning_rate=1e-4", "--set", "trust_remote_code=true",
        "--set", "finetune.batching=packing", "--set", "evaluate.sample_generations=2",
        "--experiment", "my-exp",
    ])
    out = capsys.readouterr().out
    assert rc == 0
    job = submitted_job(azure)
    assert azure.client.jobs.create_or_update.call_args.kwargs["experiment_name"] == "my-exp"
    assert {name: node.compute for name, node in job.jobs.items()} == {
        "data_prep": "cpu-cluster", "finetune": "gpu-cluster", "evaluate": "gpu-cluster", "register": "cpu-cluster",
        "export_onnx": "cpu-cluster",
    }
    finetune = job.jobs["finetune"]
    assert finetune.distribution.type == "pytorch"
    assert finetune.distribution.process_count_per_instance == 4
    assert finetune.resources.instance_count == 2
    inputs = {name: value.result() for name, value in job.inputs.items()}
    assert inputs["lora_r"] == 8 and isinstance(inputs["lora_r"], int)
    assert inputs["learning_rate"] == 1e-4 and inputs["trust_remote_code"] is True
    assert inputs["model_name"] == "microsoft/Phi-3-mini-4k-instruct" and "model_path" not in inputs
    assert inputs["train_data"].type == "uri_file" and Path(inputs["train_data"].path) == SAMPLE_DATA  # uploaded by the SDK
    rest = job._to_rest_object().properties.jobs
    assert rest["finetune"]["inputs"]["batching"]["value"] == "packing"
    assert rest["evaluate"]["inputs"]["sample_generations"]["value"] == "2"
    # The compute was checked before submitting; the studio URL is printed.
    assert [c.args[0] for c in azure.client.compute.get.call_args_list] == ["gpu-cluster", "cpu-cluster"]
    recorded = rest_payload("job_pipeline_created")["properties"]["services"]["Studio"]["endpoint"]
    assert f"studio_url: {recorded}" in out.splitlines()  # read from the job Azure returned
    azure.client.jobs.stream.assert_not_called()
    azure.cls.from_config.assert_called_once()  # no flags, no env: config.json


def test_cpu_steps_default_to_the_gpu_compute_and_stream_waits(azure, capsys):
    assert submit.main(["--compute", "gpu-cluster", "--sample-data", "--set", PHI3, "--stream"]) == 0
    job = submitted_job(azure)
    assert {node.compute for node in job.jobs.values()} == {"gpu-cluster"}
    assert job.jobs["finetune"].distribution.process_count_per_instance == 1
    azure.client.jobs.stream.assert_called_once_with("witty_pipeline_42")


def test_stream_reports_a_failed_job(azure, capsys):
    from azure.ai.ml.exceptions import ErrorCategory, ErrorTarget, JobException

    azure.client.jobs.stream.side_effect = JobException(
        message="Exception: Job failed\nlots of detail", no_personal_data_message="x",
        target=ErrorTarget.JOB, error_category=ErrorCategory.USER_ERROR,
    )
    rc = submit.main(["--compute", "gpu-cluster", "--sample-data", "--set", PHI3, "--stream"])
    assert_one_error(capsys, rc, "witty_pipeline_42 did not complete", code=1)


def test_workspace_from_flags_or_environment(azure, monkeypatch, capsys):
    submit.main(["--compute", "gpu-cluster", "--sample-data", "--set", PHI3, "--subscription", "sub", "--resource-group", "rg", "--workspace", "ws"])
    kwargs = azure.cls.call_args.kwargs
    assert (kwargs["subscription_id"], kwargs["resource_group_name"], kwargs["workspace_name"]) == ("sub", "rg", "ws")
    assert azure.cls.call_args.args[0] is azure.credential.return_value  # DefaultAzureCredential

    monkeypatch.setenv("AZURE_SUBSCRIPTION_ID", "env-sub")
    monkeypatch.setenv("AZURE_RESOURCE_GROUP", "env-rg")
    monkeypatch.setenv("AZUREML_WORKSPACE_NAME", "env-ws")
    submit.main(["--compute", "gpu-cluster", "--sample-data", "--set", PHI3, "--workspace", "flag-ws"])
    kwargs = azure.cls.call_args.kwargs
    assert (kwargs["subscription_id"], kwargs["resource_group_name"], kwargs["workspace_name"]) == ("env-sub", "env-rg", "flag-ws")
    azure.cls.from_config.assert_not_called()


def test_incomplete_workspace_is_one_clear_error(azure, capsys):
    rc = submit.main(["--compute", "gpu-cluster", "--sample-data", "--set", PHI3, "--subscription", "sub"])
    assert_one_error(capsys, rc, "missing --resource-group, --workspace", "AZURE_RESOURCE_GROUP")


def test_missing_config_json(monkeypatch, tmp_path, capsys):
    """The real MLClient.from_config, in a folder without config.json: one clear message."""
    from azure.identity import DefaultAzureCredential

    monkeypatch.setattr("azure.identity.DefaultAzureCredential", mock.create_autospec(DefaultAzureCredential))
    for variables in azure_ml.WORKSPACE_ENV.values():
        for variable in variables:
            monkeypatch.delenv(variable, raising=False)
    monkeypatch.chdir(tmp_path)
    rc = submit.main(["--compute", "gpu-cluster", "--sample-data", "--set", PHI3, "--config", str(tmp_path / "config.json")])
    assert_one_error(capsys, rc, "no Azure ML workspace configured", "config.json", "--subscription")


def test_failed_credentials(azure, capsys, caplog):
    import logging

    from azure.core.exceptions import ClientAuthenticationError

    def fail(name):
        # What the real DefaultAzureCredential does: log an essay, then raise.
        logging.getLogger("azure.identity._credentials.chained").warning("Attempted credentials: an essay")
        raise ClientAuthenticationError(
            "DefaultAzureCredential failed to retrieve a token from the included credentials.\nAttempted credentials:\n\tEnvironmentCredential: ..."
        )

    azure.client.compute.get.side_effect = fail
    caplog.set_level(logging.WARNING)
    logging.getLogger("azure.identity").setLevel(logging.NOTSET)
    rc = submit.main(["--compute", "gpu-cluster", "--sample-data", "--set", PHI3])
    assert "essay" not in caplog.text
    captured = assert_one_error(capsys, rc, "could not authenticate to Azure", "az login", "DefaultAzureCredential failed")
    assert "Attempted credentials" not in captured.err  # one line of the SDK's message, not its essay
    azure.client.jobs.create_or_update.assert_not_called()


def test_unknown_compute_lists_the_available_ones(azure, capsys):
    rc = submit.main(["--compute", "gpu-clustr", "--sample-data", "--set", PHI3])
    assert_one_error(
        capsys, rc, "--compute 'gpu-clustr': no such compute",
        "cpu-cluster (amlcompute)", "gpu-cluster (amlcompute)", "my-ci (computeinstance)",
    )
    azure.client.jobs.create_or_update.assert_not_called()


def test_compute_that_is_not_a_cluster(azure, capsys):
    rc = submit.main(["--compute", "gpu-cluster", "--cpu-compute", "my-ci", "--sample-data", "--set", PHI3])
    captured = assert_one_error(
        capsys, rc, "--cpu-compute 'my-ci' is a computeinstance, not a compute cluster (AmlCompute)",
        "available compute clusters: cpu-cluster (amlcompute), gpu-cluster (amlcompute)",
    )
    assert "my-ci (computeinstance)" not in captured.err
    azure.client.jobs.create_or_update.assert_not_called()


def test_more_nodes_than_the_cluster_has(azure, capsys):
    rc = submit.main(["--compute", "gpu-cluster", "--instance-count", "8", "--sample-data", "--set", PHI3])
    assert_one_error(capsys, rc, "--instance-count 8 exceeds 'gpu-cluster''s max_instances (4)")


def test_unknown_set_key_fails_before_any_azure_call(azure, capsys):
    rc = submit.main(["--compute", "gpu-cluster", "--sample-data", "--set", PHI3, "--set", "lora_rank=8", "--set", "finetune.lr=1"])
    captured = assert_one_error(capsys, rc, "unknown pipeline input 'lora_rank'", "lora_r", "unknown input 'finetune.lr'")
    assert "learning_rate" in captured.err  # the known inputs are listed
    azure.credential.assert_not_called()
    azure.cls.assert_not_called()
    azure.cls.from_config.assert_not_called()


def test_bad_values_are_all_reported_at_once(azure, capsys):
    rc = submit.main([
        "--compute", "gpu-cluster", "--sample-data", "--set", PHI3, "--set", "lora_r=eight", "--set", "lora_dropout=2",
        "--set", "finetune.batching=magic", "--set", "train_data=/no/such/file.jsonl", "--set", "oops",
    ])
    assert_one_error(capsys, rc, "bad --set option", "'oops'")
    rc = submit.main([
        "--compute", "gpu-cluster", "--sample-data", "--set", PHI3, "--set", "lora_r=eight", "--set", "lora_dropout=2",
        "--set", "finetune.batching=magic", "--set", "train_data=/no/such/file.jsonl",
    ])
    assert_one_error(
        capsys, rc, "(4 problems)", "lora_r expects an integer, got 'eight'", "lora_dropout must be <= 0.9",
        "finetune.batching must be one of", "local path does not exist: /no/such/file.jsonl",
    )


def test_submit_without_a_base_model_fine_tunes_phi3_mini(azure, capsys):
    rc = submit.main(["--compute", "gpu-cluster", "--sample-data"])
    assert rc == 0
    assert "base model: microsoft/Phi-3-mini-4k-instruct (the default" in capsys.readouterr().out
    job = submitted_job(azure)
    assert job.inputs["model_name"].result() == "microsoft/Phi-3-mini-4k-instruct"


def test_two_base_models_are_refused(azure, capsys):
    rc = submit.main(["--compute", "gpu-cluster", "--sample-data", "--set", PHI3, "--set", "model_path=" + str(SAMPLE_DATA.parent)])
    assert_one_error(capsys, rc, "set one base model, not both")


def test_compute_is_required_to_submit(azure, capsys):
    rc = submit.main(["--sample-data", "--set", PHI3])
    assert_one_error(capsys, rc, "--compute is required")
    azure.cls.assert_not_called()


def test_dry_run_prints_the_complete_yaml_without_network(azure, capsys):
    rc = submit.main(["--dry-run", "--compute", "gpu-cluster", "--sample-data", "--set", PHI3, "--set", "finetune.use_rslora=true"])
    out = capsys.readouterr().out
    assert rc == 0
    pipeline = yaml.safe_load(out)
    assert set(pipeline["jobs"]) == {"data_prep", "finetune", "evaluate", "register", "export_onnx"}
    assert pipeline["inputs"]["train_data"]["path"] == str(SAMPLE_DATA)  # the local path, not azureml:...
    assert pipeline["inputs"]["trust_remote_code"] is False
    assert pipeline["jobs"]["finetune"]["inputs"]["use_rslora"] is True
    assert pipeline["jobs"]["finetune"]["distribution"] == {"type": "pytorch", "process_count_per_instance": 1}
    assert "command" in pipeline["jobs"]["finetune"]["component"]  # components inline: the complete YAML
    azure.credential.assert_not_called()
    azure.cls.assert_not_called()
    azure.cls.from_config.assert_not_called()


GRPO = ["--set", "task=rft", "--set", "training_method=grpo", "--set", f"graders={SAMPLE_DATA.parent / 'graders.json'}",
        "--set", f"train_data={SAMPLE_DATA.parent / 'rft.jsonl'}"]


@pytest.mark.parametrize("method_args, finetune_env", [([], "train-gpu"), (GRPO, "rft-gpu")])
def test_dry_run_and_validate_name_the_environment_grpo_runs_in(azure, monkeypatch, capsys, method_args, finetune_env):
    """grpo's Fine-Tune runs in rft-gpu (vllm), every other method's in train-gpu; both commands say which."""
    sample = [] if method_args else ["--sample-data"]
    assert submit.main(["--dry-run", "--compute", "gpu-cluster", *sample, "--set", PHI3, *method_args]) == 0
    captured = capsys.readouterr()
    build = yaml.safe_load(captured.out)["jobs"]["finetune"]["component"]["environment"]["build"]
    assert Path(build["path"]).parent.name == finetune_env
    assert f"finetune environments/{finetune_env}, evaluate environments/train-gpu" in captured.err
    monkeypatch.setattr("pipelines.definition.lint.lint_repo", lambda settings: [])
    assert submit.main(["--validate", "--set", PHI3, *method_args]) == 0
    assert f"finetune environments/{finetune_env}," in capsys.readouterr().out
    azure.cls.assert_not_called()


def test_validate_lists_every_problem(monkeypatch, capsys):
    monkeypatch.setattr("pipelines.definition.lint.lint_repo", lambda settings: ["a.yaml:3: inputs.x: missing description", "pipeline: jobs.y: bad"])
    assert submit.main(["--validate"]) == 1
    err = capsys.readouterr().err
    assert "2 problems:" in err and "a.yaml:3: inputs.x: missing description" in err and "pipeline: jobs.y: bad" in err
    monkeypatch.setattr("pipelines.definition.lint.lint_repo", lambda settings: [])
    assert submit.main(["--validate"]) == 0
    assert "ok:" in capsys.readouterr().out


def test_help_is_instant_because_nothing_heavy_is_imported():
    import subprocess
    import sys

    code = (
        "import sys, runpy; sys.argv = ['submit.py', '--help']\n"
        "try:\n    runpy.run_path('pipelines/submit.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('azure.ai.ml', 'mlflow', 'torch', 'transformers') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    root = Path(submit.__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True).stdout
    assert "--compute" in out and "HEAVY []" in out


# ---------------------------------------------------------------------------------------------
# --local wiring (the runner itself is tested in test_local_runner.py; here it is replaced)


def test_local_applies_the_profile_the_tiny_model_and_prints_the_summary(monkeypatch, tmp_path, capsys):
    from pipelines.local import defaults as local_defaults
    from pipelines.local import plan as local_plan
    from pipelines.local import runner as local_runner

    monkeypatch.chdir(tmp_path)
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    monkeypatch.setattr(local_defaults, "ensure_tiny_model", lambda cache_dir, **kw: tiny)
    captured_job = {}

    def fake_run(job, **kwargs):
        captured_job["job"], captured_job["kwargs"] = job, kwargs
        registration = tmp_path / "registration"
        registration.mkdir()
        (registration / "model_info.json").write_text(json.dumps(
            {"registered": True, "name": "maap-finetuned", "version": "3", "uri": "models:/maap-finetuned/3", "reason": "gate passed"}
        ))
        step = local_plan.StepResult("register", 1.0, {"registration": registration}, [], "child")
        report = tmp_path / "export_report"
        report.mkdir()
        (report / "model_info.json").write_text(json.dumps(
            {"registered": True, "name": "maap-finetuned-onnx", "version": "2", "uri": "models:/maap-finetuned-onnx/2",
             "reason": "exported and checked"}
        ))
        export = local_plan.StepResult("export_onnx", 1.0, {"export_report": report}, [], "child2")
        return local_runner.LocalRunResult("rid", tmp_path / "runs" / "rid", "sqlite:////x/mlruns.db", "maap-finetune", "parent",
                                           {"register": step, "export_onnx": export}, 2.0)

    monkeypatch.setattr(local_runner, "run_pipeline", fake_run)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    rc = submit.main(["--local", "--set", "learning_rate=0.01", "--process-count-per-instance", "2"])
    out = capsys.readouterr().out
    assert rc == 0
    job = captured_job["job"]
    inputs = {name: value.result() for name, value in job.inputs.items()}
    assert inputs["learning_rate"] == 0.01  # the user's --set wins over LOCAL_PROFILE
    for key, value in local_defaults.LOCAL_PROFILE.items():
        if key == "learning_rate":
            continue
        if "." in key:
            step, name = key.split(".")
            assert getattr(job.jobs[step].inputs, name)._data == value
            assert f"{key}={value}" in out
        else:
            assert inputs[key] == value
            assert f"{key}={value}" in out
    assert "learning_rate=" not in out.split("local profile", 1)[1].splitlines()[0]
    assert inputs["model_path"].path == str(tiny) and "model_name" not in inputs
    assert inputs["train_data"].path == str(SAMPLE_DATA)
    assert job.jobs["finetune"].distribution.process_count_per_instance == 2
    assert captured_job["kwargs"]["tracking_uri"] == "sqlite:///mlruns.db"
    assert captured_job["kwargs"]["workdir"] == tmp_path
    # A local base model needs no hub; the tiny model runs single-threaded.
    assert captured_job["kwargs"]["env"] == {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    assert "step environment: OMP_NUM_THREADS=1, HF_HUB_OFFLINE=1" in out
    lines = out.splitlines()
    assert "tracking_uri: sqlite:////x/mlruns.db" in lines
    assert "model_uri: models:/maap-finetuned/3" in lines
    assert "onnx_model: models:/maap-finetuned-onnx/2" in lines


def test_onnx_model_line_says_why_nothing_was_exported(tmp_path):
    path = tmp_path / "model_info.json"
    path.write_text(json.dumps({"registered": False, "name": "m-onnx", "reason": "the quality gate failed: loss 3.2"}))
    assert summary.onnx_model_line(path) == "onnx_model: not registered (the quality gate failed: loss 3.2)"
    path.write_text(json.dumps({"registered": False, "name": "m-onnx", "reason": "the export failed its checks: "
                                "int4: top-1 token agreement 0.85; fix: export at onnx_precision=fp32"}))
    assert summary.onnx_model_line(path) == ("onnx_model: not registered (the export failed its checks: int4: top-1 "
                                            "token agreement 0.85; fix: export at onnx_precision=fp32)")


def test_local_with_a_real_base_model_keeps_the_yaml_defaults(monkeypatch, tmp_path, capsys):
    """LOCAL_PROFILE's learning rate of 0.005 would wreck a pre-trained model: the tiny model only."""
    from pipelines.local import defaults as local_defaults
    from pipelines.local import runner as local_runner
    from pipelines.local import step as local_step
    from pipelines.definition.inputs import pipeline_input_defaults

    monkeypatch.chdir(tmp_path)
    base = tmp_path / "my-model"
    base.mkdir()
    built, captured = [], {}
    monkeypatch.setattr(local_defaults, "ensure_tiny_model", lambda *a, **k: built.append(1))

    def stop_after_capture(job, **kwargs):
        captured["job"] = job
        raise local_step.StepFailed("data_prep", 1, tmp_path / "log", "stopped by the test")

    monkeypatch.setattr(local_runner, "run_pipeline", stop_after_capture)
    assert submit.main(["--local", "--set", f"model_path={base}"]) == 1
    out = capsys.readouterr().out
    assert "local profile" not in out and built == []
    inputs = {name: value.result() for name, value in captured["job"].inputs.items()}
    defaults = pipeline_input_defaults()
    for key in ("learning_rate", "epochs", "max_seq_length", "max_new_tokens"):
        assert inputs[key] == defaults[key] != local_defaults.LOCAL_PROFILE[key], key
    assert "training data: data/sample/chat.jsonl (the sample" in out


def test_model_info_lines(tmp_path):
    path = tmp_path / "model_info.json"
    path.write_text(json.dumps({"registered": False, "name": "m", "version": None, "uri": None,
                                "reason": "quality gate failed:\nloss 3.2 >= base 3.1"}))
    assert summary.model_info_lines(path) == ["model not registered: quality gate failed: loss 3.2 >= base 3.1"]
    path.write_text(json.dumps({"registered": True, "name": "m", "version": "2", "uri": "models:/m/2", "reason": ""}))
    assert summary.model_info_lines(path) == ["model_uri: models:/m/2"]
    from maap_finetune.common.errors import UserError

    with pytest.raises(UserError, match="missing or not JSON"):
        summary.model_info_lines(tmp_path / "absent.json")


def test_local_step_failure_exits_1_with_the_step_and_log_tail(monkeypatch, tmp_path, capsys):
    from pipelines.local import defaults as local_defaults
    from pipelines.local import runner as local_runner
    from pipelines.local import step as local_step

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(local_defaults, "ensure_tiny_model", lambda cache_dir, **kw: tmp_path)

    def failing_run(job, **kwargs):
        raise local_step.StepFailed("finetune", 7, tmp_path / "std_log.txt", "CUDA? no.\nValueError: boom")

    monkeypatch.setattr(local_runner, "run_pipeline", failing_run)
    rc = submit.main(["--local"])
    captured = assert_one_error(capsys, rc, "step 'finetune' failed with exit code 7", "ValueError: boom", code=1)
    assert str(tmp_path / "std_log.txt") in captured.err


def test_local_reports_every_bad_value_before_building_anything(monkeypatch, tmp_path, capsys):
    from pipelines.local import defaults as local_defaults
    from pipelines.local import runner as local_runner

    monkeypatch.chdir(tmp_path)
    built = []
    monkeypatch.setattr(local_defaults, "ensure_tiny_model", lambda *a, **k: built.append(1))
    monkeypatch.setattr(local_runner, "run_pipeline", lambda *a, **k: built.append(2))
    rc = submit.main(["--local", "--instance-count", "0", "--set", "lora_r=0", "--set", "finetune.batching=x", "--set", "epoch=2"])
    assert_one_error(capsys, rc, "(4 problems)", "instance_count must be", "lora_r must be >= 1",
                           "finetune.batching must be one of", "unknown pipeline input 'epoch'")
    assert built == []


def test_a_submission_without_training_data_is_refused(azure, capsys):
    """No silent training on the bundled 100-row sample: data, or --sample-data on purpose."""
    for argv in (["--compute", "gpu-cluster", "--set", PHI3], ["--dry-run", "--set", PHI3]):
        rc = submit.main(argv)
        assert_one_error(capsys, rc, "set the training data: --set train_data=<file>", "--sample-data")
    assert submit.main(["--dry-run", "--set", PHI3, "--sample-data"]) == 0
    assert "data/sample/chat.jsonl" in capsys.readouterr().out


def test_free_text_that_cannot_travel_through_a_shell_command_is_refused_at_build_time(capsys):
    rc = submit.main(["--dry-run", "--sample-data", "--set", PHI3, "--set", "register.model_description=Bob's model"])
    assert_one_error(capsys, rc, "register.model_description contains a single quote", "rephrase it")
    rc = submit.main(["--dry-run", "--sample-data", "--set", PHI3, "--set", "data_prep.prompt_template=Q: {text}\nA:".replace("\\n", "\n")])
    assert_one_error(capsys, rc, "data_prep.prompt_template contains a line break", "data_prep.templates_file")


def test_hf_token_secret_puts_only_the_secret_name_on_the_model_loading_steps(capsys):
    assert submit.main(["--dry-run", "--sample-data", "--set", PHI3, "--hf-token-secret", "hf-token"]) == 0
    pipeline = yaml.safe_load(capsys.readouterr().out)
    for step in ("finetune", "evaluate", "register"):
        assert pipeline["jobs"][step]["environment_variables"]["MAAP_HF_TOKEN_SECRET"] == "hf-token"
        assert set(pipeline["jobs"][step]["environment_variables"]) <= {"MAAP_HF_TOKEN_SECRET", "MAAP_JOB_IDENTITY"}
    assert "environment_variables" not in pipeline["jobs"]["data_prep"]
    rc = submit.main(["--dry-run", "--sample-data", "--set", PHI3, "--hf-token-secret", "hf_token!"])
    assert_one_error(capsys, rc, "--hf-token-secret 'hf_token!'", "1-127 letters, digits and '-'")


@pytest.mark.parametrize("mode", [["--dry-run"], ["--compute", "gpu-cluster"], ["--local"]])
def test_a_bad_registered_model_name_is_refused_when_the_pipeline_is_built(azure, capsys, mode, tmp_path,
                                                                           monkeypatch):
    """Register checked the name only when it ran, after training; now the pipeline is refused before anything."""
    monkeypatch.chdir(tmp_path)
    rc = submit.main([*mode, "--sample-data", "--set", PHI3, "--set", "registered_model_name=my model!"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "registered_model_name 'my model!': use letters, digits" in err
    assert azure.client.jobs.create_or_update.call_count == 0
    assert not (tmp_path / "runs").exists()
