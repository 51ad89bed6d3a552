"""Run one step command and end its whole process group when the local runner dies, by any signal.

    python pipelines/step_guard.py <runner pid> bash -c '<command>'

The runner starts every step process through this guard in a new session (its own process group, so the
runner ends it whole). The guard asks Linux for a parent-death signal (prctl PR_SET_PDEATHSIG): when the
runner ends, even by kill -9, the guard gets SIGTERM and ends the group: SIGTERM, then SIGKILL after
10 s, as the runner itself does. Without it, training went on with nothing supervising it. The guard
exits as the command did (the same code, or the same signal).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1
GRACE_S = 10


def _end_group(child: subprocess.Popen) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        os.killpg(0, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + GRACE_S
    while child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(0, signal.SIGKILL)  # the guard too: nothing of the step outlives the runner


def main(argv: list[str]) -> int:
    runner_pid, command = int(argv[0]), argv[1:]
    if os.getpgrp() != os.getpid():  # the runner starts it in a new session; anywhere else, its own group
        os.setpgid(0, 0)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    died = []
    signal.signal(signal.SIGTERM, lambda signum, frame: died.append(signum))
    child = subprocess.Popen(command)  # same process group; stdout/stderr inherited (the step's log)
    if os.getppid() != runner_pid:  # the runner died before the parent-death signal was set
        died.append(signal.SIGTERM)
    while True:
        if died:
            _end_group(child)
        try:
            code = child.wait(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            if os.getppid() != runner_pid:  # not Linux, or the signal was missed
                died.append(signal.SIGTERM)
    if code < 0:  # end as the command ended: the runner reads -N for a signal
        if -code not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
