"""Real processes: preemption (SIGKILL mid-training, rerun, resume) and a 2-process gloo run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.finetune.conftest import outputs
from tests.helpers import COMPONENTS_DIR, REPO_ROOT, argv_from_spec

SCRIPT = COMPONENTS_DIR / "finetune" / "finetune.py"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("MLFLOW_RUN_ID", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    env.update(
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlruns.db'}",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=str(REPO_ROOT / "src"),
        OMP_NUM_THREADS="1",
        **extra,
    )
    return env


def _complete(checkpoints: Path) -> list[str]:
    return sorted((p.name for p in checkpoints.glob("checkpoint-*") if (p / "COMPLETE").is_file()),
                  key=lambda n: int(n.split("-")[1]))


def test_sigkill_then_rerun_resumes_from_latest_complete_checkpoint(tmp_path, tiny_model_dir, prepared_chat):
    out = outputs(tmp_path)
    argv = argv_from_spec("finetune", train_data=prepared_chat, model_path=tiny_model_dir, max_steps=12,
                          save_steps=2, save_total_limit=2, logging_steps=1, **out)
    command = [sys.executable, str(SCRIPT), *argv]
    env = _env(tmp_path)
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    checkpoints = Path(out["checkpoints"])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and first.poll() is None and len(_complete(checkpoints)) < 2:
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()[-3000:]
    done_before = _complete(checkpoints)
    assert done_before, "no complete checkpoint before the kill"
    latest = done_before[-1]
    assert not (Path(out["mlflow_model"]) / "MLmodel").exists()  # killed before the end

    # A save interrupted halfway: a newer checkpoint folder without its COMPLETE marker.
    partial = checkpoints / "checkpoint-11"
    shutil.copytree(checkpoints / latest, partial)
    (partial / "COMPLETE").unlink()
    (partial / "trainer_state.json").unlink()

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads((Path(out["adapter"]) / "training_summary.json").read_text())
    assert summary["resumed_from_checkpoint"] == latest  # the partial checkpoint-11 was skipped
    assert summary["resumed_at_step"] == int(latest.split("-")[1]) > 0
    assert summary["steps"] == 12 and summary["steps_this_run"] == 12 - summary["resumed_at_step"]
    assert "removed partial checkpoint" in second.stderr and not partial.exists()
    assert (Path(out["mlflow_model"]) / "MLmodel").is_file()
    assert len(_complete(checkpoints)) == 2  # save_total_limit


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_processes_gloo(tmp_path, tiny_model_dir, prepared_chat):
    out = outputs(tmp_path)
    argv = argv_from_spec("finetune", train_data=prepared_chat, model_path=tiny_model_dir, max_steps=4, **out)
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        env = _env(tmp_path, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                   NODE_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        log = open(tmp_path / f"rank{rank}.log", "w")
        procs.append(subprocess.Popen([sys.executable, str(SCRIPT), *argv], env=env, stdout=log,
                                      stderr=subprocess.STDOUT))
    codes = [p.wait(timeout=300) for p in procs]
    logs = [(tmp_path / f"rank{r}.log").read_text() for r in (0, 1)]
    assert codes == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    summary = json.loads((Path(out["adapter"]) / "training_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4
    # 100 examples in batches of 4 per rank over 2 ranks: 13 steps an epoch (each rank has its own shard).
    assert abs(summary["epochs"] - 4 / 13) < 1e-6
    assert (Path(out["adapter"]) / "adapter_model.safetensors").is_file()
    assert (Path(out["mlflow_model"]) / "MLmodel").is_file()
    assert summary["merge_parity"]["passed"]
    # Tokenized once: rank 0 wrote the Arrow files, rank 1 memory-mapped them; the plan says where and how long.
    assert "on rank 0 into" in logs[0] and "on rank 0 into" not in logs[1]
    assert "memory-mapping the data rank 0 tokenized" in logs[1]
    plan = json.loads((Path(out["adapter"]) / "plan.json").read_text())
    assert plan["tokenized_on"] == "rank 0" and plan["tokenize_seconds"] > 0
    assert (Path(out["checkpoints"]) / "tokenized" / "tokenized.json").is_file()
    # One MLflow run, logged by rank 0 only.
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns.db'}")
    runs = mlflow.search_runs(search_all_experiments=True)
    assert len(runs) == 1 and runs.iloc[0]["params.world_size"] == "2"


def test_sigkill_with_load_best_resumes_at_another_path_and_keeps_the_best(tmp_path, tiny_model_dir, prepared_chat):
    """Preempted with load_best_model_at_end and early stopping on, then rerun with its outputs mounted
    elsewhere (as a new attempt may get them): the best checkpoint survives rotation and the kill, and the
    final adapter is the best evaluation's over both attempts."""
    inputs = dict(train_data=prepared_chat, model_path=tiny_model_dir, learning_rate=1.0, max_steps=30, eval_steps=2,
                  save_steps=2, save_total_limit=1, load_best_model_at_end=True, early_stopping_patience=10)
    first_out = outputs(tmp_path / "attempt1")
    env = _env(tmp_path)
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen([sys.executable, str(SCRIPT), *argv_from_spec("finetune", **inputs, **first_out)],
                                 env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        checkpoints = Path(first_out["checkpoints"])
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and first.poll() is None and not any(
            int(name.split("-")[1]) >= 10 for name in _complete(checkpoints)
        ):
            time.sleep(0.05)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()[-3000:]
    latest = _complete(checkpoints)[-1]
    shutil.move(tmp_path / "attempt1", tmp_path / "attempt2")

    second_out = outputs(tmp_path / "attempt2")
    second = subprocess.run([sys.executable, str(SCRIPT), *argv_from_spec("finetune", **inputs, **second_out)],
                            env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads((Path(second_out["adapter"]) / "training_summary.json").read_text())
    assert summary["resumed_from_checkpoint"] == latest
    checkpoints = Path(second_out["checkpoints"])
    state = json.loads((checkpoints / _complete(checkpoints)[-1] / "trainer_state.json").read_text())
    evaluations = [(e["step"], e["eval_loss"]) for e in state["log_history"] if "eval_loss" in e]
    assert [step for step, _ in evaluations] == list(range(2, summary["steps"] + 1, 2))  # both attempts
    best_step = min(evaluations, key=lambda e: e[1])[0]
    best = f"checkpoint-{best_step}"
    assert summary["model_checkpoint"] == summary["best_checkpoint"] == best
    from safetensors.torch import load_file

    saved = load_file(str(Path(second_out["adapter"]) / "adapter_model.safetensors"))
    kept = load_file(str(checkpoints / best / "adapter_model.safetensors"))
    assert all((saved[k] == kept[k]).all() for k in kept)
    assert best in _complete(checkpoints) and len(_complete(checkpoints)) <= 2  # save_total_limit 1 + the best
