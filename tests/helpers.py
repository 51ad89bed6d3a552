"""Helpers shared by the tests: call a component's entry script the way its YAML would."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPONENTS_DIR = REPO_ROOT / "components"
ENTRY_SCRIPTS = {"data_prep": "data_prep.py", "finetune": "finetune.py", "evaluate": "evaluate.py", "register": "register.py",
                 "export_onnx": "export_onnx.py"}


def load_spec(step: str) -> dict:
    return yaml.safe_load((COMPONENTS_DIR / step / "spec.yaml").read_text())


def load_script(name: str, path: Path) -> ModuleType:
    """Import a script that lives outside any package (components, tools, infra) once, by path."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_entry(step: str) -> ModuleType:
    """Import a component's entry script as a module (nothing runs at import)."""
    return load_script(f"maap_component_{step}", COMPONENTS_DIR / step / ENTRY_SCRIPTS[step])


def assert_one_error(capsys, rc: int, *fragments: str, code: int = 2, on_error_line: bool = False):
    """A CLI failed the way users are promised: exit `code`, no traceback, one `error:` line.

    Each fragment must appear on stderr, or on the error line itself with `on_error_line`.
    Returns the captured output.
    """
    captured = capsys.readouterr()
    assert rc == code
    assert "Traceback" not in captured.err + captured.out
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, captured.err
    where = errors[0] if on_error_line else captured.err
    for fragment in fragments:
        assert fragment in where, (fragment, where)
    return captured


def argv_from_spec(step: str, **values: Any) -> list[str]:
    """Build argv from the component YAML: its defaults, overridden by `values`.

    Optional inputs are passed only when given (as Azure ML drops their `$[[...]]` block);
    a value of None drops any flag. Outputs must be given.
    """
    spec = load_spec(step)
    argv: list[str] = []
    for name, inp in (spec.get("inputs") or {}).items():
        value = values.pop(name, inp.get("default"))
        if value is None:
            continue
        argv += [f"--{name}", str(value)]
    for name in spec.get("outputs") or {}:
        if name not in values:
            raise KeyError(f"output {name!r} of {step} needs a path")
        argv += [f"--{name}", str(values.pop(name))]
    if values:
        raise KeyError(f"{step} has no inputs or outputs named {sorted(values)}")
    return argv


def write_prepared_splits(folder: Path, rows: list[dict], held_out: int, task: str, data_format: str) -> Path:
    """Data Prep's output contract from prepared `rows`: the first `held_out` are test, the next `held_out`
    validation, the rest train."""
    import json

    from maap_finetune.data.prepared import write_metadata

    splits = {"test": rows[:held_out], "validation": rows[held_out:2 * held_out], "train": rows[2 * held_out:]}
    folder.mkdir(parents=True, exist_ok=True)
    for name, split in splits.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in split), encoding="utf-8")
    write_metadata(folder, task=task, format=data_format,
                   splits={n: {"file": f"{n}.jsonl", "rows": len(s)} for n, s in splits.items()},
                   label_set=None, templates={}, source={})
    return folder


def run_local_pipeline(workdir: Path, *sets: str, timeout: int = 900) -> str:
    """`python pipelines/submit.py --local [--set ...]` in `workdir`, offline and outside any MLflow run, as a user
    runs it; its stdout (the run summary) once it has exited 0."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MLFLOW_RUN_ID", None)
    command = [sys.executable, str(REPO_ROOT / "pipelines" / "submit.py"), "--local"]
    for setting in sets:
        command += ["--set", setting]
    proc = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"local run failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout
