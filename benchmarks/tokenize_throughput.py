"""Tokenization throughput: `tokenize_rows` at a baseline commit against this checkout's, side by side.

The baseline (`main` in the tables: fc38069's row-by-row algorithm unless `--baseline_ref` names another) is
`src/maap_finetune/training/data.py` as it is at `--baseline_ref` (read with `git show`, so every contender runs
in this process with the same tokenizer and rows). Rounds alternate the order of the contenders; each round tokenizes
the whole generated split with max_seq_length 10^6 (nothing truncated) and both contenders' examples are checked
equal. Reported per contender: tokens per wall second (median over the rounds) and tokens per CPU second of the
process (every thread counted: a measure that holds on a shared machine). Two tokenizers, both built here and
never downloaded: the tiny Phi-3 tokenizer (byte-level BPE, 1,024 tokens, trained on data/sample) and a
real-size one (byte-level BPE, 32,000 tokens, trained on this Python's standard-library sources) with Phi-3's
chat template. Two data sets, generated from the same sources' text lines: single-turn chats (half with a system
prompt) and 8-turn chats.

    python benchmarks/tokenize_throughput.py                       # prints a table, writes nothing
    python benchmarks/tokenize_throughput.py --out benchmarks/results/tokenize-cpu2-2026-12-01
    python benchmarks/tokenize_throughput.py --out benchmarks/results/tokenize-threads-cpu2-2026-12-02
    python benchmarks/tokenize_throughput.py --baseline_ref main --contenders main batched --turns 1 8 32

`--turns` replaces the two data sets with chats of each many turns (60-word questions, 300-word answers,
`--turn_total` turns in each data set) and reports milliseconds per turn, which stays flat where tokenization is
linear in the turns: the exact span method's prefix renders grow it, the piecewise method's do not
(`training.chat_spans`; the rows each method took are reported for the checkout).

Contenders: `main` (baseline), `workers` (the batched algorithm at `--workers_ref`, spread over one forked
process per usable core: how rank 0 tokenized until the Rust threads replaced it), `batched` (this checkout,
one thread: TOKENIZERS_PARALLELISM=false, as Fine-Tune's entry script sets it) and `batched-parallel` (this
checkout with `parallel=True`: the Rust tokenizer encodes each batch on every core, as rank 0 runs it in
training.tokenized).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

CONTENDERS = ("main", "workers", "batched", "batched-parallel")


def module_at(ref: str, name: str):
    """training/data.py as it is at git `ref`, imported as module `name`."""
    source = subprocess.run(["git", "show", f"{ref}:src/maap_finetune/training/data.py"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / f"{name}.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def stdlib_lines(max_bytes: int) -> list[str]:
    """Text lines of this Python's standard library sources, in a fixed order, up to `max_bytes`."""
    lines, size = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            line = line.strip()
            if len(line) > 20:
                lines.append(line)
                size += len(line)
        if size >= max_bytes:
            break
    return lines


def real_size_tokenizer(lines: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    from trl.chat_template_utils import phi3_chat_template

    special = ["<unk>", "<s>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(lines, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="<|endoftext|>",
                                   unk_token="<unk>", pad_token="<|endoftext|>",
                                   additional_special_tokens=special[3:])
    fast.chat_template = phi3_chat_template
    return fast


def chats(lines: list[str], rows: int, turns: int, user_words: int, answer_words: int, seed: int) -> list[dict]:
    rng = random.Random(seed)

    def text(words: int) -> str:
        start, out = rng.randrange(len(lines)), []
        while sum(len(x.split()) for x in out) < words:
            out.append(lines[(start + len(out)) % len(lines)])
        return " ".join(out)

    result = []
    for _ in range(rows):
        messages = [{"role": "system", "content": text(12)}] if rng.random() < 0.5 else []
        for _ in range(turns):
            messages += [{"role": "user", "content": text(user_words)},
                         {"role": "assistant", "content": text(answer_words)}]
        result.append({"messages": messages})
    return result


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the forked workers), every thread counted."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def measure(fn, tokenizer, rows, kwargs: dict):
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # as Fine-Tune's entry script sets it
    wall, cpu = time.perf_counter(), _cpu_seconds()
    examples, stats = fn(tokenizer, rows, 10**6, False, "train", **kwargs)
    wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
    return examples, {"tokens": stats.tokens, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                      "tokens_per_s": round(stats.tokens / wall), "tokens_per_cpu_s": round(stats.tokens / cpu)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline_ref", default="fc38069")
    parser.add_argument("--workers_ref", default="de990b1", help="a commit whose tokenize_rows takes workers=N")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--single_rows", type=int, default=1000)
    parser.add_argument("--multi_rows", type=int, default=30)
    parser.add_argument("--vocab_size", type=int, default=32000)
    parser.add_argument("--turns", type=int, nargs="+", default=None,
                        help="data sets of chats with each many turns instead of single-turn and 8-turn")
    parser.add_argument("--turn_total", type=int, default=320, help="turns in each --turns data set")
    parser.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=list(CONTENDERS),
                        help="which to run; main (the baseline) always runs")
    parser.add_argument("--out", type=Path, default=None, help="write <out>.json and <out>.md")
    args = parser.parse_args(argv)

    from maap_finetune.models.tiny import SAMPLE_DATA, build_tokenizer
    from maap_finetune.training import data as batched
    from maap_finetune.training.chat_spans import ROWS_BY_METHOD as rows_by_method

    contenders = ("main",) + tuple(name for name in CONTENDERS[1:] if name in args.contenders)
    baseline = module_at(args.baseline_ref, "baseline_data")
    forked = module_at(args.workers_ref, "workers_data") if "workers" in contenders else None
    lines = stdlib_lines(8_000_000)
    started = time.perf_counter()
    tokenizers = {"tiny (1,024)": build_tokenizer([SAMPLE_DATA]),
                  f"real-size ({args.vocab_size:,})": real_size_tokenizer(lines, args.vocab_size)}
    print(f"tokenizers built in {time.perf_counter() - started:.0f} s", flush=True)
    if args.turns:
        datasets = {f"{t}-turn": chats(lines, max(1, args.turn_total // t), t, 60, 300, seed=t) for t in args.turns}
    else:
        datasets = {"single-turn": chats(lines, args.single_rows, 1, 40, 150, seed=1),
                    "8-turn": chats(lines, args.multi_rows, 8, 60, 300, seed=2)}
    workers = len(os.sched_getaffinity(0))
    functions = {"main": (baseline.tokenize_rows, {}), "batched": (batched.tokenize_rows, {}),
                 "batched-parallel": (batched.tokenize_rows, {"parallel": True})}
    if forked is not None:
        functions["workers"] = (forked.tokenize_rows, {"workers": workers})
    load_before = os.getloadavg()
    results = []
    for tok_name, tokenizer in tokenizers.items():
        for data_name, rows in datasets.items():
            rounds = {name: [] for name in contenders}
            turns = sum(sum(m["role"] == "assistant" for m in row["messages"]) for row in rows)
            rows_by_method.clear()
            for r in range(args.rounds):
                order = contenders if r % 2 == 0 else tuple(reversed(contenders))
                outputs = {}
                for name in order:
                    fn, kwargs = functions[name]
                    outputs[name], numbers = measure(fn, tokenizer, rows, kwargs)
                    numbers["ms_per_turn"] = round(numbers["wall_s"] * 1000 / turns, 3)
                    rounds[name].append(numbers)
                assert all(outputs[name] == outputs["main"] for name in contenders), "outputs differ"
                del outputs
            tokens = rounds["main"][0]["tokens"]
            entry = {"tokenizer": tok_name, "data": data_name, "rows": len(rows), "turns": turns, "tokens": tokens,
                     "tokens_per_row": round(tokens / len(rows)), "rounds": rounds}
            entry["checkout_rows_by_span_method"] = dict(rows_by_method)  # every round of the checkout's contenders
            for name in contenders:
                entry[name] = {key: statistics.median(x[key] for x in rounds[name])
                               for key in ("tokens_per_s", "tokens_per_cpu_s", "ms_per_turn")}
            entry["speedup"] = {name: round(entry[name]["tokens_per_s"] / entry["main"]["tokens_per_s"], 2)
                                for name in contenders[1:]}
            results.append(entry)
            print(f"{tok_name:>20} {data_name:>12} {tokens / len(rows):>7.0f} tok/row  " + "  ".join(
                f"{name} {entry[name]['tokens_per_s']:>9,.0f}/s ({entry[name]['tokens_per_cpu_s']:,.0f}/cpu-s, "
                f"{entry[name]['ms_per_turn']:.3f} ms/turn)" for name in contenders)
                + f"  checkout rows by span method {entry['checkout_rows_by_span_method']}", flush=True)
    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "command": "python benchmarks/tokenize_throughput.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "baseline_ref": args.baseline_ref, "workers_ref": args.workers_ref, "rounds": args.rounds,
        "workers": workers, "contenders": list(contenders), "results": results,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        args.out.with_suffix(".md").write_text(markdown(report), encoding="utf-8")
    return report


def markdown(report: dict) -> str:
    m, contenders = report["machine"], report["contenders"]
    out = [
        f"# Tokenization throughput: tokenize_rows at {report['baseline_ref']} (main) against "
        + ", ".join(contenders[1:]),
        "",
        f"Machine: {m['cpus']} CPUs, {m['platform']}, Python {m['python']}; load average "
        f"{m['load_average_before']} before, {m['load_average_after']} after (shared machine).",
        f"Baseline: training/data.py at {report['baseline_ref']}. Median of {report['rounds']} alternated rounds; "
        "every round's outputs checked equal. Tokens per second of wall time, and per CPU second of the process.",
        "",
        f"Command: `{report['command']}`. workers: {report['workers']} forked processes (how rank 0 tokenized at "
        f"{report['workers_ref']}); batched-parallel: the Rust tokenizer's threads on every core (how rank 0 "
        "tokenizes now); batched: one thread.",
        "",
        "| tokenizer | data | rows | tokens/row | " + " | ".join(f"{name} tok/s" for name in contenders)
        + " | " + " | ".join(f"{name} ms/turn" for name in contenders) + " | main tok/cpu-s | "
        + " | ".join(f"{name} tok/cpu-s" for name in contenders[1:]) + " | speedup over main |",
        "|---|---|---:|---:|" + "---:|" * (3 * len(contenders) + 1),
    ]
    for e in report["results"]:
        out.append(
            f"| {e['tokenizer']} | {e['data']} | {e['rows']} | {e['tokens_per_row']:,} | "
            + " | ".join(f"{e[name]['tokens_per_s']:,.0f}" for name in contenders) + " | "
            + " | ".join(f"{e[name]['ms_per_turn']:.3f}" for name in contenders) + " | "
            + " | ".join(f"{e[name]['tokens_per_cpu_s']:,.0f}" for name in contenders) + " | "
            + ", ".join(f"{name} {e['speedup'][name]}x" for name in contenders[1:]) + " |"
        )
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
