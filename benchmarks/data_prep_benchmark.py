"""Data Prep throughput and peak memory at 1,000,000 chat rows.

Generates a chat JSONL in a temporary folder (never committed), then runs, each in its own process
so peak RSS is that run's alone:
  1. baseline: read every line and json-parse it (the floor any validator pays);
  2. data prep: the Data Prep entry script (validation + normalization + split + report, MLflow on SQLite);
  3. data prep with token statistics: the same with the tiny Phi-3 tokenizer (model_path).
  4. orjson versus the standard json module inside Data Prep's two passes (in one process, alternating),
     on the first --compare_rows rows: the case for the orjson dependency.
Prints rows/s, peak RSS and the ratios, measured side by side in one run.

    python benchmarks/data_prep_benchmark.py                 # 1M rows, all three runs
    python benchmarks/data_prep_benchmark.py --rows 200000 --token_rows 100000
Goals (issue 4): >= 20,000 rows/s for validation + normalization and peak RSS < 1 GiB at 1M rows.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORDS = ("bike frame wheel warranty service price gear brake chain saddle tire pedal shop order delivery "
         "return size colour model battery motor charge range helmet light lock rack bell").split()


def generate(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)

    def sentence(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."

    with open(path, "w", encoding="utf-8") as out:
        for i in range(rows):
            messages = []
            if rng.random() < 0.5:
                messages.append({"role": "system", "content": "You are the support assistant of Contoso Cycles."})
            for _ in range(rng.choice((1, 1, 2, 3))):
                messages.append({"role": "user", "content": f"Question {i}: {sentence(rng.randint(5, 25))}"})
                messages.append({"role": "assistant", "content": sentence(rng.randint(10, 60))})
            out.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")


BASELINE = """
import json, sys, time
t = time.perf_counter(); n = 0
with open(sys.argv[1], 'rb') as f:
    for line in f:
        if line.strip():
            json.loads(line); n += 1
print(json.dumps({"rows": n, "seconds": time.perf_counter() - t}))
"""

DATA_PREP = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from tests.helpers import load_entry
module = load_entry("data_prep")
argv = json.loads(sys.argv[2])
t = time.perf_counter()
report = module.main(argv)
print(json.dumps({"rows": report["rows"]["read"], "seconds": time.perf_counter() - t}))
"""


def run_measured(code: str, args: list[str], env: dict) -> dict:
    """Run a child and read its own peak RSS (ru_maxrss of that child only, via wait4)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, cwd=REPO)
    stdout = proc.stdout.read()
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({proc.returncode}):\n{stderr.decode()[-3000:]}")
    result = json.loads(stdout.decode().strip().splitlines()[-1])
    result["wall_seconds"] = round(time.perf_counter() - start, 2)
    result["peak_rss_mib"] = round(usage.ru_maxrss / 1024, 1)  # Linux reports KiB
    if result.get("seconds"):
        result["rows_per_second"] = round(result["rows"] / result["seconds"])
    return result


COMPARE = """
import json, sys, time
from pathlib import Path
import orjson
from maap_finetune.data import prepare as P, readers as R, tasks as T
encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
backends = {"orjson": (orjson.loads, orjson.dumps), "json": (json.loads, lambda o: encoder.encode(o).encode())}
source, rows, out = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
best = {}
for name in ["orjson", "json", "orjson", "json"]:
    P.loads = R.loads = T.loads = backends[name][0]
    P.dumps = backends[name][1]
    adapter = T.TaskAdapter("chat", {}, {})
    t = time.perf_counter()
    P.prepare([P.InputSpec("train_data", source, "train")], adapter, out, validation_ratio=0.1, test_ratio=0.1,
              seed=1, on_invalid="fail")
    best[name] = max(best.get(name, 0), rows / (time.perf_counter() - t))
print(json.dumps({"rows": rows, "orjson_rows_per_s": round(best["orjson"]),
                  "json_rows_per_s": round(best["json"]), "ratio": round(best["orjson"] / best["json"], 2)}))
"""


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--token_rows", type=int, default=1_000_000, help="rows for the token-statistics run (0: skip)")
    parser.add_argument("--compare_rows", type=int, default=100_000, help="rows for orjson vs json (0: skip)")
    args = parser.parse_args(argv)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "true", "PYTHONPATH": str(REPO)}
    results: dict = {"cpus": os.cpu_count(), "rows": args.rows}
    with tempfile.TemporaryDirectory(prefix="maap-bench-") as tmp:
        tmp_path = Path(tmp)
        data = tmp_path / "chat.jsonl"
        t = time.perf_counter()
        generate(data, args.rows)
        results["generate_seconds"] = round(time.perf_counter() - t, 1)
        results["file_mib"] = round(data.stat().st_size / 2**20, 1)
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlruns.db'}"

        def prep_argv(source: Path, out: str, **extra) -> list[str]:
            sys.path.insert(0, str(REPO))
            from tests.helpers import argv_from_spec

            return argv_from_spec("data_prep", train_data=source, prepared_data=tmp_path / out / "prepared",
                                  data_report=tmp_path / out / "report", **extra)

        results["baseline_read_json"] = run_measured(BASELINE, [str(data)], env)
        results["data_prep"] = run_measured(DATA_PREP, [str(REPO), json.dumps(prep_argv(data, "plain"))], env)
        results["ratio_data_prep_to_baseline_rows_per_s"] = round(
            results["data_prep"]["rows_per_second"] / results["baseline_read_json"]["rows_per_second"], 3)
        if args.token_rows:
            from maap_finetune.models.tiny import build_tiny_phi3

            model = build_tiny_phi3(tmp_path / "tiny", seed=0)
            token_data = data
            if args.token_rows != args.rows:
                token_data = tmp_path / "chat_tokens.jsonl"
                generate(token_data, args.token_rows)
            results["data_prep_with_token_stats"] = run_measured(
                DATA_PREP, [str(REPO), json.dumps(prep_argv(token_data, "tokens", model_path=model))], env)
        if args.compare_rows:
            sample = tmp_path / "compare.jsonl"
            with open(data, "rb") as src, open(sample, "wb") as dst:
                for _, line in zip(range(args.compare_rows), src):
                    dst.write(line)
            results["json_backends"] = run_measured(COMPARE, [str(sample), str(args.compare_rows),
                                                              str(tmp_path / "compare_out")], env)
    print(json.dumps(results, indent=2))
    plain = results["data_prep"]
    print(f"\ndata prep: {plain['rows_per_second']} rows/s (goal >= 20000), peak RSS {plain['peak_rss_mib']} MiB "
          f"(goal < 1024) at {args.rows} rows; {results['ratio_data_prep_to_baseline_rows_per_s']}x the rows/s "
          "of a bare json.loads loop measured in the same run")
    if "data_prep_with_token_stats" in results:
        tok = results["data_prep_with_token_stats"]
        print(f"with token statistics: {tok['rows_per_second']} rows/s, peak RSS {tok['peak_rss_mib']} MiB "
              f"at {args.token_rows} rows")
    if "json_backends" in results:
        cmp = results["json_backends"]
        print(f"orjson {cmp['orjson_rows_per_s']} rows/s vs json {cmp['json_rows_per_s']} rows/s inside Data Prep's "
              f"passes: {cmp['ratio']}x")
    return results


if __name__ == "__main__":
    main()
