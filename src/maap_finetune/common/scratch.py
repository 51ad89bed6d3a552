"""Scratch folders that do not outlive their step.

`scratch_folder("maap-onnx-")` is a temp folder named `<prefix><pid>.<start time>-<random>`. It is removed
on every exit Python sees: a normal return, an exception, and SIGTERM (which the local runner and Azure
ML send to stop a step; Python's default action would skip the cleanup). A process killed by SIGKILL
cannot clean up: the next scratch folder of the same prefix removes those whose owner process is gone.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path


def process_start_time(pid: int) -> str | None:
    """The start time of process `pid` in clock ticks since boot (Linux /proc), or None when it does not run.
    With the pid it tells a live process from a later one that got the same pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _owner_alive(pid: int, start: str) -> bool:
    if not Path("/proc").is_dir():  # no /proc: keep every folder whose pid exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    return process_start_time(pid) == start


def remove_stale(prefix: str, root: str | os.PathLike | None = None) -> list[Path]:
    """Remove `<prefix><pid>.<start>-*` folders under the temp folder whose owner process has ended."""
    root = Path(root or tempfile.gettempdir())
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.(\d+)-")
    removed = []
    for path in root.glob(f"{prefix}*"):
        match = pattern.match(path.name)
        if match and path.is_dir() and not _owner_alive(int(match.group(1)), match.group(2)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


@contextlib.contextmanager
def sigterm_exits() -> Iterator[None]:
    """SIGTERM raises SystemExit(143) while inside, so `with` blocks and `finally` clauses run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def exit_on_sigterm(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def scratch_folder(prefix: str) -> Iterator[str]:
    remove_stale(prefix)
    pid = os.getpid()
    with sigterm_exits(), tempfile.TemporaryDirectory(prefix=f"{prefix}{pid}.{process_start_time(pid) or 0}-") as folder:
        yield folder
