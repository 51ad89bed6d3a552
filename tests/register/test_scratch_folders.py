"""Register's and Export ONNX's scratch folders (maap-register-*, maap-onnx-*) never outlive their step:
removed on return, exception and SIGTERM; after a SIGKILL, the next one of the same prefix removes them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO_ROOT

HOLDER = """
import sys, time
from maap_finetune.common.scratch import scratch_folder
with scratch_folder(sys.argv[1]) as folder:
    print(folder, flush=True)
    time.sleep(120)
"""


def _hold(prefix: str, tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(REPO_ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, prefix], env=env, stdout=subprocess.PIPE, text=True)
    folder = Path(proc.stdout.readline().strip())
    assert folder.is_dir() and folder.parent == tmp_path and folder.name.startswith(f"{prefix}{proc.pid}.")
    return proc, folder


def test_sigterm_removes_the_folder(tmp_path):
    proc, folder = _hold("maap-onnx-", tmp_path)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert not folder.exists()


def test_after_sigkill_the_next_scratch_folder_removes_the_dead_owners_one(tmp_path):
    killed, stale = _hold("maap-register-", tmp_path)
    alive, live = _hold("maap-register-", tmp_path)  # this one's owner is alive: kept
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    assert stale.is_dir()  # SIGKILL: nothing could clean up
    other = tmp_path / "maap-register-notours"
    other.mkdir()
    nxt, fresh = _hold("maap-register-", tmp_path)
    try:
        assert not stale.exists() and live.is_dir() and fresh.is_dir() and other.is_dir()
    finally:
        for proc in (alive, nxt):
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    assert not live.exists() and not fresh.exists()
