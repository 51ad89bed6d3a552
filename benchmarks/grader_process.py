"""Python graders: one child process per `Graders.grade` call (what GRPO does per step) against one per row.

A GRPO step grades batch x num_generations completions; starting a Python child per completion would pay
the interpreter's start each time. Both contenders run the same grader source over the same rows, in
alternating order, through `maap_finetune.graders.python_runner.run_python_graders`; the report gives the
median wall-clock seconds per step and per row over rounds.

    python benchmarks/grader_process.py --rows 64 --rounds 5
Results: benchmarks/results/grader_process-<machine>-<date>.json (with the machine and the exact command).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

SOURCE = "import re\ndef grade(sample, item):\n    return 1.0 if re.search(r'<answer>.*</answer>', sample['output_text']) else 0.0\n"


def one_call(rows):
    from maap_finetune.graders.python_runner import PythonSource, run_python_graders

    run_python_graders([PythonSource("tagged", SOURCE)], rows, [f"row {i}" for i in range(len(rows))], 10.0, "bench")


def per_row(rows):
    for row in rows:
        one_call([row])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    rows = [{"sample": {"output_text": f"<answer>{i}</answer>" if i % 2 else str(i), "output_json": None},
             "item": {"answer": str(i)}} for i in range(args.rows)]
    contenders = {"one_process_per_call": one_call, "one_process_per_row": per_row}
    seconds = {name: [] for name in contenders}
    for round_index in range(args.rounds):
        order = list(contenders) if round_index % 2 == 0 else list(reversed(contenders))
        for name in order:
            start = time.perf_counter()
            contenders[name](rows)
            seconds[name].append(time.perf_counter() - start)
    result = {
        "command": "python benchmarks/grader_process.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_average_1m_at_end": os.getloadavg()[0]},
        "date": datetime.date.today().isoformat(), "rows_per_step": args.rows, "rounds": args.rounds,
        "contenders": {name: {"median_s_per_step": statistics.median(values),
                              "median_ms_per_row": 1000 * statistics.median(values) / args.rows,
                              "min_s": min(values), "max_s": max(values)} for name, values in seconds.items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"grader_process-cpu{os.cpu_count()}-{result['date']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result["contenders"], indent=2))
    return result


if __name__ == "__main__":
    main()
