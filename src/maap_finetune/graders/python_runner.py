"""Runs every python grader over a batch of rows in one child process (python_worker.py), timing each row.

One child per `Graders.grade` call, not per row: a GRPO step grades `batch x num_generations` completions,
and a child per row pays Python's start each time (benchmarks/grader_process.py: 64 rows took 0.16 s in one
child against 10.8 s with one per row, medians of 3 rounds on a shared 2-core machine). Each (row, grader) must answer within the time limit; a
late one is killed and reported with the grader and the row's place, as is a raise or a non-number.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maap_finetune.common.errors import UserError

WORKER = Path(__file__).resolve().parent / "python_worker.py"
START_ALLOWANCE_S = 30.0  # the child's own start and the graders' imports, before the first row


@dataclass(frozen=True)
class PythonSource:
    name: str
    source: str


def run_python_graders(
    graders: Sequence[PythonSource],
    rows: Sequence[Mapping[str, Any]],
    where: Sequence[str],
    time_limit_s: float,
    file: str,
) -> dict[str, list[float]]:
    """{grader name: score per row}; `rows` are {"sample", "item"}; `where[i]` names row i (file:line)."""
    scores: dict[str, list[float]] = {g.name: [] for g in graders}
    if not graders:
        return scores
    request = json.dumps({"graders": [{"name": g.name, "source": g.source} for g in graders],
                          "rows": list(rows)}).encode()
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen([sys.executable, "-I", str(WORKER)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=stderr)
        try:
            try:
                proc.stdin.write(request)
                proc.stdin.close()
            except BrokenPipeError:
                pass  # the child died at start: reading its answer says so, with its output
            lines = _lines(proc, time_limit_s)
            expected = [(i, g.name) for i in range(len(rows)) for g in graders]
            _first(lines, proc, stderr, file, graders)
            for index, name in expected:
                message = next(lines, None)
                if message is None or "score" not in message:
                    _fail(message, proc, stderr, file, where, index, name, time_limit_s)
                scores[name].append(message["score"])
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    return scores


def _lines(proc: subprocess.Popen, time_limit_s: float):
    """The child's answer lines, parsed; None (and the generator ends) when one is late or the child died."""
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    buffer = b""
    limit = START_ALLOWANCE_S + time_limit_s
    while True:
        deadline = time.monotonic() + limit
        while b"\n" not in buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(timeout=left):
                yield {"late": True}
                return
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                yield None
                return
            buffer += chunk
        line, buffer = buffer.split(b"\n", 1)
        yield json.loads(line)
        limit = time_limit_s


def _stderr_tail(stderr) -> str:
    stderr.seek(0)
    text = stderr.read().decode(errors="replace").strip()
    return text[-2000:]


def _first(lines, proc, stderr, file: str, graders: Sequence[PythonSource]) -> None:
    message = next(lines, None)
    if message and message.get("ready"):
        return
    if message and "error" in message:
        err = message["error"]
        raise UserError(f"{file}: python grader {err['grader']!r} fails when its source runs: {err['message']}"
                        + (f"\n{err['traceback']}" if err["traceback"] else "")
                        + "\nFix the grader's source (it must define grade(sample, item) -> float).")
    names = ", ".join(repr(g.name) for g in graders)
    why = "did not start in time" if message and message.get("late") else "stopped before starting"
    raise UserError(f"{file}: the process running python graders {names} {why}"
                    f" (exit code {proc.poll()}); its output:\n{_stderr_tail(stderr)}")


def _fail(message, proc, stderr, file, where, index, name, time_limit_s) -> None:
    place = where[index]
    if message and "error" in message:
        err = message["error"]
        place, name = where[err["row"]], err["grader"]
        if err["kind"] == "returned":
            raise UserError(f"{place}: python grader {name!r} (in {file}) {err['message']}; grade(sample, item) "
                            "must return a float")
        raise UserError(f"{place}: python grader {name!r} (in {file}) raised {err['message']}\n{err['traceback']}"
                        "\nFix the grader so that it returns a score for every row (for a completion it cannot "
                        "grade, return 0).")
    if message and message.get("late"):
        proc.kill()
        raise UserError(f"{place}: python grader {name!r} (in {file}) took longer than {time_limit_s:g} s on this "
                        "row and was stopped; make it faster (or loop-free) on this row")
    raise UserError(f"{place}: the process running python grader {name!r} (in {file}) died "
                    f"(exit code {proc.poll()}); its output:\n{_stderr_tail(stderr)}")
