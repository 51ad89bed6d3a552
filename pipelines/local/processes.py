"""The processes of a step: distributed variables, the interpreter shims, the step guard, and ending them."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

STEP_GUARD = Path(__file__).resolve().parents[1] / "step_guard.py"
DIST_VARS = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK", "GROUP_RANK")


def interpreter_shims(folder: Path) -> Path:
    """A folder with `python`/`python3` pointing at this interpreter, for the front of a step's PATH.

    Azure ML runs `python` from the environment's PATH; locally that environment is this interpreter.
    """
    # exec shims, not symlinks: a symlinked venv interpreter would not find its pyvenv.cfg (nor its packages).
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("python", "python3"):
        shim = folder / name
        if not shim.exists():
            shim.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} \"$@\"\n")
            shim.chmod(0o755)
    return folder


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_environments(process_count: int, instance_count: int, port: int) -> list[dict[str, str]]:
    """The torch.distributed variables Azure ML sets, one dict per process (all on this machine)."""
    world_size = process_count * instance_count
    return [
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "WORLD_SIZE": str(world_size),
            "RANK": str(node_rank * process_count + local_rank),
            "LOCAL_RANK": str(local_rank),
            "LOCAL_WORLD_SIZE": str(process_count),
            "NODE_RANK": str(node_rank),
            "GROUP_RANK": str(node_rank),
        }
        for node_rank in range(instance_count)
        for local_rank in range(process_count)
    ]


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    """Signal the step's whole process group: bash, the program it runs and anything that spawned."""
    try:
        os.killpg(process.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def terminate(processes: list[subprocess.Popen]) -> None:
    """End every step process and its group: SIGTERM, then SIGKILL after 10 s (as Azure ML's job stop)."""
    for process in processes:
        _signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait()


class Terminated(KeyboardInterrupt):
    """The runner got SIGTERM (`timeout`, CI, a job scheduler): unwinds like Ctrl-C."""


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Turn SIGTERM into `Terminated` while a pipeline runs, so every step process is ended and every run
    is marked KILLED instead of the runner dying and leaving training processes behind."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def raise_terminated(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
