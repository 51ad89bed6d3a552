"""Smoke tier: free text with spaces and shell syntax reaches the scripts whole, as in Azure ML.

The local runner pastes values into each command as text and runs it with `bash -c`, as Azure ML does,
so these two values would break here exactly where they would break in a workspace if the component
YAMLs left them unquoted: "Support bot v2 (July data)" is three words and a shell syntax error, and
"qkv_proj, o_proj" is two words.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DESCRIPTION = "Support bot v2 (July data)"
TARGETS = "qkv_proj, o_proj"

pytestmark = pytest.mark.slow


def test_description_and_target_modules_with_spaces_and_parentheses_pass_through(tmp_path):
    from mlflow import MlflowClient

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MLFLOW_RUN_ID", None)
    proc = subprocess.run(
        [
            sys.executable, str(REPO_ROOT / "pipelines" / "submit.py"), "--local",
            "--set", f"register.model_description={DESCRIPTION}",
            "--set", f"finetune.target_modules={TARGETS}",
            "--set", "epochs=1",
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    run_dir = Path(re.search(r"^run_dir: (\S+)$", proc.stdout, re.MULTILINE).group(1))

    # What bash was given: the value inside the YAML's single quotes.
    command = json.loads((run_dir / "register" / "command.json").read_text())["command"]
    assert f"--model_description '{DESCRIPTION}'" in command
    adapter_config = json.loads((run_dir / "finetune" / "outputs" / "adapter" / "adapter_config.json").read_text())
    assert set(adapter_config["target_modules"]) == {"qkv_proj", "o_proj"}

    name, version = re.search(r"^model_uri: models:/([^/\s]+)/(\d+)$", proc.stdout, re.MULTILINE).groups()
    registered = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}").get_model_version(name, version)
    assert registered.description.startswith(DESCRIPTION)
