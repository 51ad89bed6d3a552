"""Live progress: the records a step appends, read back and shown as the local runner shows them."""

from __future__ import annotations

import io
import json

from maap_finetune.common.progress import (
    ProgressDisplay,
    ProgressTail,
    ProgressWriter,
    format_progress,
    read_new_bytes,
)


def test_format_progress_shows_step_loss_throughput_and_eta():
    record = {"step": 30, "max_steps": 120, "start_step": 10, "elapsed_s": 40.0, "loss": 2.34567,
              "eval_loss": 2.5, "tokens_per_second": 12345.6}
    # 20 steps in 40 s since the (resumed) start: 90 steps left take 180 s.
    assert format_progress(record) == "step 30/120 (25%)  loss 2.3457  eval 2.5000  12,346 tok/s  ETA 3:00"
    assert format_progress({"step": 1}) == "step 1"


def test_tail_returns_complete_records_only(tmp_path):
    path = tmp_path / "progress.jsonl"
    tail = ProgressTail(path)
    assert tail.read() == []  # not written yet
    ProgressWriter(path).write({"step": 1, "max_steps": 2})
    with open(path, "a") as handle:
        handle.write('{"step": 2, "max')  # a record being written
    assert [r["step"] for r in tail.read()] == [1]
    with open(path, "a") as handle:
        handle.write('_steps": 2}\n')
    assert tail.read() == [{"step": 2, "max_steps": 2}]
    assert not ProgressWriter(None).enabled  # outside the runner: MAAP_PROGRESS_FILE unset, nothing written


def test_the_tail_and_the_streamed_log_share_one_reader(tmp_path):
    """read_new_bytes serves both: the progress tail keeps a partial line back, --stream's echo shows it."""
    from pipelines.local.step import _echo_new

    path = tmp_path / "std_log.txt"
    assert read_new_bytes(path, 0) == b""  # not created yet
    path.write_bytes(b"loading\nstep 1 of")
    assert read_new_bytes(path, 8) == b"step 1 of"
    out = io.StringIO()
    assert _echo_new(path, 0, out) == 17 and out.getvalue() == "loading\nstep 1 of"  # partial line and all
    with open(path, "ab") as handle:
        handle.write(b" 2\n")
    assert _echo_new(path, 17, out) == 20 and out.getvalue() == "loading\nstep 1 of 2\n"
    assert _echo_new(tmp_path / "missing.txt", 5, out) == 5


def test_display_updates_one_line_on_a_terminal(tmp_path):
    path = tmp_path / "progress.jsonl"
    out = io.StringIO()
    display = ProgressDisplay(path, out, label="finetune: ", tty=True)
    assert display.poll() is False  # nothing yet: the runner keeps its heartbeat
    writer = ProgressWriter(path)
    writer.write({"step": 1, "max_steps": 4, "start_step": 0, "elapsed_s": 2.0, "loss": 3.0})
    assert display.poll() is True
    writer.write({"step": 2, "max_steps": 4, "start_step": 0, "elapsed_s": 4.0, "loss": 2.0})
    display.poll()
    display.close()
    assert out.getvalue() == (
        "\r\x1b[K  finetune: step 1/4 (25%)  loss 3.0000  ETA 0:06"
        "\r\x1b[K  finetune: step 2/4 (50%)  loss 2.0000  ETA 0:04\n"
    )


def test_display_prints_plain_lines_elsewhere_and_ends_a_stale_line(tmp_path):
    path = tmp_path / "progress.jsonl"
    writer = ProgressWriter(path)
    out = io.StringIO()
    display = ProgressDisplay(path, out, tty=False, plain_every_s=3600)
    for step in (1, 2, 3):
        writer.write({"step": step, "max_steps": 4})
        display.poll()
    display.close()  # the last record seen is printed even though the interval has not passed
    assert out.getvalue().splitlines() == ["  step 1/4 (25%)", "  step 3/4 (75%)"]

    out = io.StringIO()
    display = ProgressDisplay(tmp_path / "other.jsonl", out, tty=True, fresh_s=0)
    ProgressWriter(tmp_path / "other.jsonl").write({"step": 1, "max_steps": 4})
    assert display.poll() is False  # already stale (training over): the line is ended for the heartbeat
    assert out.getvalue().endswith("\n")
    assert json.loads((tmp_path / "other.jsonl").read_text()) == {"step": 1, "max_steps": 4}
