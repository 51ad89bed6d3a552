"""A checkpoint damaged after its COMPLETE marker is caught before resuming, moved aside, and the run
resumes from the newest sound checkpoint (or from scratch): real Fine-Tune processes, real Trainer files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from maap_finetune.training.checkpoints import checkpoint_damage
from tests.finetune.conftest import outputs
from tests.finetune.test_resume_and_distributed import SCRIPT, _env
from tests.helpers import argv_from_spec


def _halve(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DAMAGE = {
    "safetensors halved": ("adapter_model.safetensors", _halve),
    "safetensors emptied": ("adapter_model.safetensors", lambda p: p.write_bytes(b"")),
    "optimizer.pt halved": ("optimizer.pt", _halve),
    "rng_state.pth garbage": ("rng_state.pth", lambda p: p.write_bytes(b"\x00garbage" * 64)),
    "trainer_state.json cut": ("trainer_state.json", lambda p: p.write_text(p.read_text()[:40])),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir, prepared_chat):
    """A finished 4-step run with complete checkpoints 2 and 4."""
    tmp_path = tmp_path_factory.mktemp("trained")
    out = outputs(tmp_path)
    argv = argv_from_spec("finetune", train_data=prepared_chat, model_path=tiny_model_dir, max_steps=4,
                          save_steps=2, save_total_limit=2, logging_steps=1, **out)
    proc = subprocess.run([sys.executable, str(SCRIPT), *argv], env=_env(tmp_path), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in Path(out["checkpoints"]).iterdir() if p.name.startswith("checkpoint-")) == [
        "checkpoint-2", "checkpoint-4"]
    return Path(out["checkpoints"])


@pytest.mark.parametrize("case", DAMAGE)
def test_each_kind_of_damage_is_named(trained, tmp_path, case):
    name, damage = DAMAGE[case]
    folder = tmp_path / "checkpoint-4"
    shutil.copytree(trained / "checkpoint-4", folder)
    assert checkpoint_damage(folder) is None
    damage(folder / name)
    assert checkpoint_damage(folder).startswith(f"{folder / name}: ")


def _rerun(trained: Path, tmp_path: Path, tiny_model_dir, prepared_chat, damaged: list[str], case: str):
    out = outputs(tmp_path)
    shutil.rmtree(out["checkpoints"], ignore_errors=True)
    shutil.copytree(trained, out["checkpoints"])
    checkpoints = Path(out["checkpoints"])
    name, damage = DAMAGE[case]
    for checkpoint in damaged:
        damage(checkpoints / checkpoint / name)
    argv = argv_from_spec("finetune", train_data=prepared_chat, model_path=tiny_model_dir, max_steps=4,
                          save_steps=2, save_total_limit=2, logging_steps=1, **out)
    proc = subprocess.run([sys.executable, str(SCRIPT), *argv], env=_env(tmp_path), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return checkpoints, json.loads((Path(out["adapter"]) / "training_summary.json").read_text()), proc.stderr


def test_a_damaged_newest_checkpoint_is_moved_aside_and_the_previous_one_resumes(trained, tmp_path, tiny_model_dir,
                                                                                  prepared_chat):
    checkpoints, summary, stderr = _rerun(trained, tmp_path, tiny_model_dir, prepared_chat, ["checkpoint-4"],
                                          "optimizer.pt halved")
    assert summary["resumed_from_checkpoint"] == "checkpoint-2" and summary["steps_this_run"] == 2
    [line] = [line for line in stderr.splitlines() if "is damaged" in line]
    assert f"{checkpoints / 'checkpoint-4' / 'optimizer.pt'}: not a complete torch archive" in line
    assert (checkpoints / "checkpoint-4.damaged" / "optimizer.pt").is_file()  # kept, not deleted


def test_when_every_checkpoint_is_damaged_training_starts_from_scratch(trained, tmp_path, tiny_model_dir,
                                                                       prepared_chat):
    checkpoints, summary, stderr = _rerun(trained, tmp_path, tiny_model_dir, prepared_chat,
                                          ["checkpoint-2", "checkpoint-4"], "safetensors halved")
    assert summary.get("resumed_from_checkpoint") is None and summary["steps_this_run"] == 4
    assert stderr.count("is damaged") == 2 and "starts from scratch" in stderr
    assert (checkpoints / "checkpoint-2.damaged").is_dir() and (checkpoints / "checkpoint-4.damaged").is_dir()
