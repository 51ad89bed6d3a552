"""Load on the scoring server: azmlinfsrv serving pipelines/scoring/score.py with the tiny chat model on 127.0.0.1.

Sends `--requests` chat requests (max_tokens `--max-tokens`) at each concurrency, records latency p50/p99,
status codes and the gunicorn worker's resident memory (VmRSS) before and after; then a liveness probe
series during one long request. `--config` chooses the server environment: `deployment` (what deploy.py
sets: gthread with deploy.SERVER_THREADS threads), `sync` (azmlinfsrv's default single-threaded worker,
main's setting) or `workers2` (two sync workers, the other way to answer probes during a request), to
measure the memory cost of each.

    python benchmarks/scoring_load.py --requests 300 --concurrency 1 4 16
    python benchmarks/scoring_load.py --config sync --requests 20 --concurrency 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))


def worker_rss_mib(master_pid: int) -> float:
    """VmRSS of the gunicorn worker(s) under the azmlinfsrv master, in MiB."""
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    total = 0
    for pid in children:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def post(url: str, body: dict, timeout: float = 300) -> tuple[int, float]:
    data = json.dumps(body).encode()
    started = time.monotonic()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as err:
        err.read()
        status = err.code
    except OSError:
        status = -1
    return status, time.monotonic() - started


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--config", choices=["deployment", "sync", "workers2"], default="deployment")
    parser.add_argument("--long-tokens", type=int, default=120, help="max_tokens of the long request (0: skip)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from maap_finetune.models.tiny import build_tiny_phi3
    from maap_finetune.registry.mlflow_model import save_mlflow_model
    from pipelines import deploy
    from tests.deploy.test_scoring_server import _ensure_server, _free_port

    server_bin = _ensure_server()
    work = Path(tempfile.mkdtemp(prefix="scoring-load-"))
    tiny = build_tiny_phi3(work / "tiny", seed=0)
    model_dir = work / "models" / "maap-finetuned" / "1"
    save_mlflow_model(AutoModelForCausalLM.from_pretrained(tiny), AutoTokenizer.from_pretrained(tiny),
                      model_dir / "mlflow_model")
    environment = {"deployment": deploy.server_environment(deploy.MAX_REQUEST_TIMEOUT_MS), "sync": {},
                   "workers2": {"WORKER_COUNT": "2"}}[args.config]
    port = _free_port()
    env = {**os.environ, **environment, "AZUREML_MODEL_DIR": str(model_dir),
           "PATH": f"{server_bin.parent}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    log = open(work / "azmlinfsrv.log", "wb")
    server = subprocess.Popen([str(server_bin), "--entry_script", str(deploy.SCORING_DIR / "score.py"),
                               "--model_dir", str(model_dir), "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    results = {"config": args.config, "environment": environment, "max_tokens": args.max_tokens, "runs": []}
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"{base}/", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit((work / "azmlinfsrv.log").read_text()[-3000:])
                time.sleep(0.5)
        body = {"input_data": {"messages": [{"role": "user", "content": "Do you sell helmets?"}],
                               "max_tokens": args.max_tokens}}
        post(f"{base}/score", body)  # warm-up
        results["rss_mib_idle"] = round(worker_rss_mib(server.pid), 1)
        for concurrency in args.concurrency:
            before = worker_rss_mib(server.pid)
            started = time.monotonic()
            with ThreadPoolExecutor(concurrency) as pool:
                outcomes = list(pool.map(lambda _: post(f"{base}/score", body), range(args.requests)))
            wall = time.monotonic() - started
            latencies = sorted(seconds for _, seconds in outcomes)
            statuses: dict[str, int] = {}
            for status, _ in outcomes:
                statuses[str(status)] = statuses.get(str(status), 0) + 1
            run = {"concurrency": concurrency, "requests": args.requests, "wall_s": round(wall, 1),
                   "p50_ms": round(1000 * statistics.median(latencies)),
                   "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]),
                   "statuses": statuses, "errors": sum(n for s, n in statuses.items() if s != "200"),
                   "rss_mib_before": round(before, 1), "rss_mib_after": round(worker_rss_mib(server.pid), 1)}
            results["runs"].append(run)
            print(json.dumps(run), flush=True)
        if args.long_tokens:
            # "Hi" makes the tiny model generate to max_tokens (no early end of sequence).
            long_body = {"input_data": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": args.long_tokens}}
            outcome = {}
            thread = threading.Thread(target=lambda: outcome.update(result=post(f"{base}/score", long_body)))
            thread.start()
            time.sleep(0.3)
            probes = []
            while thread.is_alive():
                probe_started = time.monotonic()
                try:
                    urllib.request.urlopen(f"{base}/", timeout=30).close()
                    probes.append(round(1000 * (time.monotonic() - probe_started)))
                except OSError:
                    probes.append(-1)
                time.sleep(0.5)
            thread.join()
            status, seconds = outcome["result"]
            results["long_request"] = {"max_tokens": args.long_tokens, "status": status, "seconds": round(seconds, 1),
                                       "probes": len(probes), "probe_ms_max": max(probes, default=None),
                                       "probe_ms_median": statistics.median(probes) if probes else None}
            print(json.dumps(results["long_request"]), flush=True)
        results["rss_mib_end"] = round(worker_rss_mib(server.pid), 1)
    finally:
        os.killpg(server.pid, 9)
        server.wait(timeout=30)
    print(json.dumps({k: v for k, v in results.items() if k != "runs"}))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
