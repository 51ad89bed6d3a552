"""Live progress of a step, as JSON lines in a file the step writes and the local runner tails.

The runner names the file in `MAAP_PROGRESS_FILE` (under the step's logs folder); a step that finds
the variable appends one record per update: `{"step", "max_steps", "start_step", "elapsed_s", "loss",
"eval_loss", "tokens_per_second"}` (any but `step` may be missing or null). Outside the runner the
variable is unset and nothing is written. The runner shows the latest record as one updating line on
a terminal, as plain lines now and then otherwise: the numbers come from the step's own metrics,
never from its log.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

PROGRESS_ENV = "MAAP_PROGRESS_FILE"
PROGRESS_FILE = "progress.jsonl"
PLAIN_EVERY_S = 10.0
FRESH_S = 30.0  # a record older than this no longer counts as live progress (training over, merge running)


class ProgressWriter:
    """Append records to the file named by `MAAP_PROGRESS_FILE` (a no-op when it is unset)."""

    def __init__(self, path: str | os.PathLike | None = None):
        path = path if path is not None else os.environ.get(PROGRESS_ENV)
        self.path = Path(path) if path else None

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        # One write per line, flushed: the reader never sees half a record except at the very end.
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, separators=(",", ":")) + "\n")


def read_new_bytes(path: str | os.PathLike, offset: int) -> bytes:
    """What a growing file holds past `offset` (b"" while it does not exist yet); the caller advances its offset."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read()
    except FileNotFoundError:
        return b""


class ProgressTail:
    """Read the records appended to a progress file since the last call (complete lines only)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.offset = 0

    def read(self) -> list[dict[str, Any]]:
        data = read_new_bytes(self.path, self.offset)
        end = data.rfind(b"\n") + 1
        self.offset += end
        records = []
        for line in data[:end].splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a foreign line in the file; progress is best effort, the step's log has the truth
            if isinstance(record, dict) and "step" in record:
                records.append(record)
        return records


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def format_progress(record: dict[str, Any]) -> str:
    """`step 12/75 (16%)  loss 4.213  eval 4.310  1,234 tok/s  ETA 0:31` from one record."""
    step, total = int(record["step"]), record.get("max_steps")
    parts = [f"step {step}/{total} ({100 * step // total}%)" if total else f"step {step}"]
    if record.get("loss") is not None:
        parts.append(f"loss {record['loss']:.4f}")
    if record.get("eval_loss") is not None:
        parts.append(f"eval {record['eval_loss']:.4f}")
    if record.get("tokens_per_second"):
        parts.append(f"{record['tokens_per_second']:,.0f} tok/s")
    done = step - int(record.get("start_step") or 0)
    elapsed = record.get("elapsed_s")
    if total and elapsed and done > 0:
        parts.append(f"ETA {_duration(elapsed / done * max(0, total - step))}")
    return "  ".join(parts)


class ProgressDisplay:
    """Show a step's progress file: one updating line on a TTY, a plain line every `plain_every_s` otherwise.

    Call `poll()` from the runner's wait loop; it returns True while progress is live (a record came in
    the last `fresh_s` seconds), so the runner can leave out its "still running" heartbeat. Call `close()`
    when the step ends."""

    def __init__(self, path: str | os.PathLike, out: TextIO = sys.stdout, label: str = "",
                 tty: bool | None = None, plain_every_s: float = PLAIN_EVERY_S, fresh_s: float = FRESH_S):
        self.tail = ProgressTail(path)
        self.out = out
        self.label = label
        self.tty = out.isatty() if tty is None else tty
        self.plain_every_s = plain_every_s
        self.fresh_s = fresh_s
        self._last_record = -float("inf")
        self._open_line = False
        self._last_plain = -float("inf")
        self._pending: str | None = None
        self._last_text: str | None = None

    def poll(self) -> bool:
        records = self.tail.read()
        now = time.monotonic()
        if records:
            self._last_record = now
            text = f"  {self.label}{format_progress(records[-1])}"
            final = records[-1].get("max_steps") == records[-1]["step"]
            if self.tty:
                self.out.write("\r\x1b[K" + text)
                self.out.flush()
                self._open_line = True
            elif text == self._last_text:
                pass  # the same numbers again (an evaluation at the last step): nothing new to say
            elif final or now - self._last_plain >= self.plain_every_s:
                self._print(text)
            else:
                self._pending = text
        live = now - self._last_record < self.fresh_s
        if not live:
            self._end_line()  # whatever the runner prints next starts on its own line
        return live

    def _print(self, text: str) -> None:
        print(text, file=self.out, flush=True)
        self._last_plain = time.monotonic()
        self._last_text = text
        self._pending = None

    def _end_line(self) -> None:
        if self._open_line:
            self.out.write("\n")
            self.out.flush()
            self._open_line = False
        elif self._pending is not None:
            self._print(self._pending)

    def close(self) -> None:
        self.poll()
        self._end_line()
