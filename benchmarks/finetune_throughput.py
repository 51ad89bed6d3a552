"""Fine-Tune throughput and quality: this component against TRL `SFTTrainer` at its best, side by side.

Contenders, each trained in its own process (clean peak RSS) on one thread:
- trl_best: SFTTrainer + peft the way TRL recommends for this job: padding_free=True, no gradient
  checkpointing, assistant_only_loss=True (the chat template carries {% generation %} markers);
- trl_best_packing: the same with packing=True, packing_strategy="bfd", rows sized so a step holds about
  as many tokens as 4 examples;
- trl_defaults: SFTConfig's own defaults (batch 8, lr 2e-5, linear schedule, checkpointing, loss on every
  token): the tutorial script, shown for reference only; its settings differ from everyone else's;
- component: this component's entry script with its YAML defaults.
Shared by all but trl_defaults: LoRA r=16 alpha=32 dropout=0.05 all-linear, lr 2e-4, cosine with 3%
warmup, 4 examples per optimizer step, one epoch, max length 1024 (no example is longer), fp32, seed 42,
loss on the assistant tokens only. Ablation rows change one factor of the component each.

Measured per run: non-padding tokens per wall-clock second and per CPU-second of `trainer.train()`
(other processes on shared cores do not distort CPU seconds), peak RSS during training, tokens per
optimizer step, and the loss on the assistant tokens of a held-out test split (>= 200 rows, separate from
the validation split), with the untrained base model's loss as the reference. Rounds alternate the order
of the contenders; the report gives the median and the min-max spread over rounds.

    python benchmarks/finetune_throughput.py --rounds 3                       # the measurement
    python benchmarks/finetune_throughput.py --rounds 1 --train_rows 32 --test_rows 200 --no_ablations  # quick check
Results: benchmarks/results/<machine>-<date>.json and .md (with this machine and the exact command).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import re
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

BENCH_CONFIG = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8,
                    num_key_value_heads=4)
SHARED = dict(learning_rate=2e-4, lr_scheduler_type="cosine", warmup_ratio=0.03, per_device_train_batch_size=4,
              max_seq_length=1024, epochs=1, seed=42)
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")

CONTENDERS = {
    "trl_best": {"kind": "trl", "packing": False},
    "trl_best_packing": {"kind": "trl", "packing": True},
    "trl_defaults": {"kind": "trl_defaults"},
    "component": {"kind": "component", "overrides": {}},
}
# One factor of the component changed per row (the kernels factor needs CUDA + Triton: see NOT_RUN).
ABLATIONS = {
    "padding: batching padded": {"kind": "component", "overrides": {"batching": "padded"}},
    "padding: batching group_by_length": {"kind": "component", "overrides": {"batching": "group_by_length"}},
    "checkpointing: gradient_checkpointing true": {"kind": "component",
                                                   "overrides": {"gradient_checkpointing": True}},
    "batch size: 8 per step (lr unchanged)": {"kind": "component", "overrides": {"per_device_train_batch_size": 8}},
    "batching: max_tokens_per_batch 1024 (about 4 examples)": {"kind": "component",
                                                               "overrides": {"max_tokens_per_batch": 1024}},
}
# Tried on the component with a Trainer argument it has no input for (--trials); kept only if one wins.
TRIALS = {
    "trial: optim adamw_torch_fused": {"kind": "component", "overrides": {}, "trainer_args": {"optim": "adamw_torch_fused"}},
    # Recompiles for every new padding-free batch length: one round shows it (a few minutes).
    "trial: torch_compile": {"kind": "component", "overrides": {}, "trainer_args": {"torch_compile": True},
                             "first_round_only": True},
}
NOT_RUN = {"kernels: use_liger_kernel true": "Liger's kernels are Triton GPU kernels; not runnable on CPU "
                                             "(benchmarks/gpu_suite.sh measures them on a GPU)"}


# ---------------------------------------------------------------------------------------------
# setup: model and data
# ---------------------------------------------------------------------------------------------
def build_model(folder: Path) -> Path:
    import torch
    from transformers import GenerationConfig, Phi3Config, Phi3ForCausalLM

    from maap_finetune.models.tiny import SAMPLE_DATA, TINY_CONFIG, build_tokenizer

    tokenizer = build_tokenizer([SAMPLE_DATA])
    config = Phi3Config(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                        **{**TINY_CONFIG, **BENCH_CONFIG})
    torch.manual_seed(0)
    model = Phi3ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def generate_chats(n: int, seed: int) -> list[dict]:
    """Chats whose lengths vary widely (about 30 to 900 tokens), built from the sample data's sentences."""
    from maap_finetune.models.tiny import SAMPLE_DATA

    rows = [json.loads(line) for line in SAMPLE_DATA.read_text().splitlines() if line.strip()]
    questions = [m["content"] for r in rows for m in r["messages"] if m["role"] == "user"]
    answers = [m["content"] for r in rows for m in r["messages"] if m["role"] == "assistant"]
    rng = random.Random(seed)
    chats = []
    for _ in range(n):
        repeats = min(40, max(1, int(rng.lognormvariate(1.2, 1.0))))  # heavy-tailed answer length
        answer = " ".join(rng.choice(answers) for _ in range(repeats))
        question = " ".join(rng.choice(questions) for _ in range(rng.randint(1, 3)))
        chats.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]})
    return chats


def write_prepared(folder: Path, splits: dict[str, list[dict]]) -> Path:
    from maap_finetune.data.prepared import write_metadata

    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_metadata(folder, task="chat", format="messages",
                   splits={k: {"file": f"{k}.jsonl", "rows": len(v)} for k, v in splits.items()})
    return folder


def data_facts(model_dir: Path, prepared: Path) -> dict:
    """Token lengths of the train split as the component tokenizes it (checks nothing is truncated)."""
    from transformers import AutoTokenizer

    from maap_finetune.data.prepared import load_prepared
    from maap_finetune.training.data import tokenize_rows

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    examples, stats = tokenize_rows(tokenizer, load_prepared(prepared).rows("train"), 10**6, False, "train")
    lengths = [e["length"] for e in examples]
    if max(lengths) > SHARED["max_seq_length"]:
        raise SystemExit(f"an example has {max(lengths)} tokens, above max length {SHARED['max_seq_length']}")
    return {"examples": len(lengths), "tokens": sum(lengths), "mean_length": sum(lengths) / len(lengths),
            "max_length": max(lengths), "target_tokens": stats.target_tokens}


def test_loss(model_dir: str, prepared: Path) -> float:
    from maap_finetune.data.prepared import load_prepared
    from maap_finetune.training.data import target_token_loss

    return target_token_loss(model_dir, load_prepared(prepared).rows("test"), 4096, "test")


# ---------------------------------------------------------------------------------------------
# the contenders, each run in its own process
# ---------------------------------------------------------------------------------------------
def run_trl(model_dir: str, prepared: Path, out: Path, spec: dict, facts: dict) -> dict:
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from maap_finetune.training.monitoring import CountingCollator, TokenCounter

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa")
    data = load_dataset("json", data_files={"train": str(prepared / "train.jsonl")})["train"]
    common = dict(output_dir=str(out), bf16=False, report_to="none", save_strategy="no", use_cpu=True,
                  disable_tqdm=True, logging_steps=10**6)
    if spec["kind"] == "trl_defaults":
        args = SFTConfig(**common)
    else:
        examples_per_step = SHARED["per_device_train_batch_size"]
        if spec["packing"]:
            # Rows about as long as 4 mean examples (at least the longest, so nothing is cut): equal tokens per step.
            row = max(facts["max_length"], round(examples_per_step * facts["mean_length"]))
            shape = dict(packing=True, packing_strategy="bfd", max_length=row, per_device_train_batch_size=1)
        else:
            shape = dict(padding_free=True, max_length=None, per_device_train_batch_size=examples_per_step)
        args = SFTConfig(
            **common, **shape, num_train_epochs=SHARED["epochs"], learning_rate=SHARED["learning_rate"],
            lr_scheduler_type=SHARED["lr_scheduler_type"], warmup_steps=SHARED["warmup_ratio"],
            gradient_checkpointing=False, assistant_only_loss=True, seed=SHARED["seed"],
        )
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                         peft_config=LoraConfig(**LORA))
    counter = TokenCounter()
    trainer.data_collator = CountingCollator(trainer.data_collator, counter)
    output = trainer.train()
    peak = _peak_rss_mb()
    trainer.model.merge_and_unload().save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    return {"tokens": counter.tokens, "padding_ratio": counter.padding_ratio, "steps": trainer.state.global_step,
            "train_runtime_s": output.metrics["train_runtime"], "peak_rss_mb": peak,
            "test_loss": test_loss(str(out / "model"), prepared)}


def run_component(model_dir: str, prepared: Path, out: Path, spec: dict, facts: dict) -> dict:
    from transformers import Trainer

    from tests.helpers import argv_from_spec, load_entry

    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{out / 'mlruns.db'}")
    peaks = []
    original = Trainer.train

    def train_then_note_peak(self, *a, **k):
        try:
            return original(self, *a, **k)
        finally:
            peaks.append(_peak_rss_mb())

    Trainer.train = train_then_note_peak
    if spec.get("trainer_args"):
        import dataclasses

        from maap_finetune.training import builders

        build = builders.build_sft_config
        builders.build_sft_config = lambda *a, **k: dataclasses.replace(build(*a, **k), **spec["trainer_args"])
    settings = {**{k: v for k, v in SHARED.items()}, **spec["overrides"]}
    summary = load_entry("finetune").main(argv_from_spec(
        "finetune", train_data=prepared, model_path=model_dir, adapter=out / "adapter",
        mlflow_model=out / "mlflow_model", checkpoints=out / "checkpoints", save_steps=10**6, logging_steps=10**6,
        **settings))
    return {"tokens": summary["tokens"], "padding_ratio": summary["padding_ratio"], "steps": summary["steps"],
            "train_runtime_s": summary["train_runtime_s"], "peak_rss_mb": peaks[0], "plan": summary["plan"],
            "test_loss": test_loss(str(out / "mlflow_model"), prepared)}


def _peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 / 1024 if sys.platform == "darwin" else rss / 1024


class _CpuClock:
    """CPU seconds this process spent inside trainer.train() (robust to other load on shared cores), and its
    resident memory when training started (what imports and the loaded model hold before any step)."""

    spent = 0.0
    rss_at_train_start_mb = 0.0


def _rss_now_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _install_cpu_clock() -> None:
    from transformers import Trainer

    original = Trainer.train

    def timed(self, *args, **kwargs):
        _CpuClock.rss_at_train_start_mb = _rss_now_mb()
        before = resource.getrusage(resource.RUSAGE_SELF)
        try:
            return original(self, *args, **kwargs)
        finally:
            after = resource.getrusage(resource.RUSAGE_SELF)
            _CpuClock.spent += (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

    Trainer.train = timed


def child(spec_json: str, model_dir: str, prepared: str, out: str, facts_json: str) -> None:
    import logging
    import warnings

    import torch

    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)  # one core each: CPU seconds then measure compute, whatever else runs here
    _install_cpu_clock()
    spec, facts = json.loads(spec_json), json.loads(facts_json)
    runner = run_component if spec["kind"] == "component" else run_trl
    result = runner(model_dir, Path(prepared), Path(out), spec, facts)
    result["train_cpu_s"] = _CpuClock.spent
    result["rss_at_train_start_mb"] = _CpuClock.rss_at_train_start_mb
    result["tokens_per_second"] = result["tokens"] / result["train_runtime_s"]
    result["tokens_per_cpu_second"] = result["tokens"] / _CpuClock.spent
    result["tokens_per_step"] = result["tokens"] / result["steps"]
    print("RESULT " + json.dumps(result), flush=True)


def spawn(spec: dict, model_dir: Path, prepared: Path, out: Path, facts: dict) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": f"{REPO / 'src'}:{REPO}"}
    env.pop("MLFLOW_RUN_ID", None)
    out.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec), str(model_dir), str(prepared), str(out),
         json.dumps(facts)], env=env, capture_output=True, text=True,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{spec} failed:\n{done.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
METRICS = ("tokens_per_second", "tokens_per_cpu_second", "peak_rss_mb", "rss_at_train_start_mb", "test_loss",
           "tokens_per_step")


def summarize(runs: list[dict]) -> dict:
    out = {}
    for key in METRICS:
        values = [r[key] for r in runs]
        out[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    return out


def machine() -> dict:
    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = re.findall(r"model name\s*:\s*(.+)", cpuinfo.read_text())
        cpu = names[0] if names else cpu
    import peft
    import torch
    import transformers
    import trl

    return {"host": platform.node(), "cpu": cpu, "logical_cores": os.cpu_count(), "os": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "trl": trl.__version__, "peft": peft.__version__}


def markdown(report: dict) -> str:
    ref = report["summary"]["trl_best"]
    lines = [
        f"# Fine-Tune throughput, {report['date']}", "",
        f"Machine: {report['machine']['cpu']}, {report['machine']['logical_cores']} logical cores, "
        f"{report['machine']['os']}; torch {report['machine']['torch']}, transformers "
        f"{report['machine']['transformers']}, trl {report['machine']['trl']}, peft {report['machine']['peft']}.",
        "", f"Command: `{report['command']}`", "",
        f"Model: Phi-3 architecture {report['model']}, fp32, one thread per process. Data: {report['data']}.",
        "", f"Note: {report['note']}" if report["note"] else "", "",
        f"Base model (untrained) test loss: {report['base_test_loss']:.4f}. Median over {report['rounds']} "
        "alternated rounds, [min, max] in brackets; ratios are medians against trl_best.", "",
        "| contender | tokens/s (wall) | tokens per CPU-s | x trl_best (CPU-s) | peak RSS MB | RSS at train start MB "
        "| tokens/step | test loss | vs trl_best loss |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, s in report["summary"].items():
        def cell(key, fmt):
            m = s[key]
            return f"{m['median']:{fmt}} [{m['min']:{fmt}}, {m['max']:{fmt}}]"
        ratio = s["tokens_per_cpu_second"]["median"] / ref["tokens_per_cpu_second"]["median"]
        loss = (s["test_loss"]["median"] - ref["test_loss"]["median"]) / ref["test_loss"]["median"]
        rounds = len(report["runs"][label])
        name = label if rounds == report["rounds"] else f"{label} ({rounds} run{'s' if rounds > 1 else ''})"
        lines.append(f"| {name} | {cell('tokens_per_second', '.0f')} | {cell('tokens_per_cpu_second', '.0f')} | "
                     f"{ratio:.2f}x | {cell('peak_rss_mb', '.0f')} | {cell('rss_at_train_start_mb', '.0f')} | "
                     f"{s['tokens_per_step']['median']:.0f} | "
                     f"{cell('test_loss', '.4f')} | {loss:+.2%} |")
    for label, why in report["not_run"].items():
        lines.append(f"| {label} | not run: {why} | | | | | | | |")
    lines += ["", "trl_defaults uses SFTConfig's defaults (batch 8, lr 2e-5, linear schedule, gradient checkpointing, "
              "loss on every token): a reference, not a like-for-like contender.", ""]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:7])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train_rows", type=int, default=192)
    parser.add_argument("--validation_rows", type=int, default=32)
    parser.add_argument("--test_rows", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds of the contenders")
    parser.add_argument("--ablation_rounds", type=int, default=1, help="rounds that also run the ablation rows")
    parser.add_argument("--no_ablations", action="store_true")
    parser.add_argument("--trials", action="store_true", help="also run the TRIALS rows in every round")
    parser.add_argument("--only", help="comma-separated contenders to run (default: all)")
    parser.add_argument("--machine", default=re.sub(r"[^A-Za-z0-9_.-]", "-", platform.node()) or "machine")
    parser.add_argument("--note", default="", help="written into the report (such as other load on the machine)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.test_rows < 200:
        parser.error("--test_rows must be at least 200 (the loss comparison needs a real test split)")

    report = {"date": datetime.date.today().isoformat(), "machine": machine(), "note": args.note,
              "command": "python " + shlex.join(["benchmarks/finetune_throughput.py", *sys.argv[1:]]),
              "model": BENCH_CONFIG, "shared": SHARED, "lora": LORA, "rounds": args.rounds,
              "not_run": NOT_RUN, "runs": {}}
    args.results.mkdir(parents=True, exist_ok=True)
    stem = args.results / f"{args.machine}-{report['date']}"
    partial = stem.with_suffix(".partial.json")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = build_model(tmp / "model")
        chats = generate_chats(args.train_rows + args.validation_rows + args.test_rows, seed=0)
        n_train, n_val = args.train_rows, args.validation_rows
        prepared = write_prepared(tmp / "prepared", {"train": chats[:n_train], "validation": chats[n_train:n_train + n_val],
                                                     "test": chats[n_train + n_val:]})
        facts = data_facts(model_dir, prepared)
        report["data"] = (f"{args.train_rows} train / {args.validation_rows} validation / {args.test_rows} test "
                          f"generated chats; train: {facts['tokens']} tokens, mean {facts['mean_length']:.0f}, "
                          f"longest {facts['max_length']}")
        report["base_test_loss"] = test_loss(str(model_dir), prepared)
        print(f"{report['data']}; base test loss {report['base_test_loss']:.4f}", flush=True)
        for round_index in range(args.rounds):
            lineup = {k: v for k, v in CONTENDERS.items() if not args.only or k in args.only.split(",")}
            if args.trials:
                lineup.update({k: v for k, v in TRIALS.items() if round_index == 0 or not v.get("first_round_only")})
            if not args.no_ablations and round_index < args.ablation_rounds:
                lineup.update(ABLATIONS)
            order = list(lineup.items())
            order = order if round_index % 2 == 0 else order[::-1]
            for label, spec in order:
                result = spawn(spec, model_dir, prepared, tmp / f"round{round_index}" / re.sub(r"\W+", "_", label), facts)
                report["runs"].setdefault(label, []).append(result)
                partial.write_text(json.dumps(report, indent=2) + "\n")  # kept if a later run fails
                print(f"round {round_index} {label:56s} tokens/s {result['tokens_per_second']:6.0f}  tokens/CPU-s "
                      f"{result['tokens_per_cpu_second']:6.0f}  tokens/step {result['tokens_per_step']:5.0f}  peak RSS "
                      f"{result['peak_rss_mb']:5.0f} MB  test loss {result['test_loss']:.4f}", flush=True)
    report["summary"] = {label: summarize(runs) for label, runs in report["runs"].items()}
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    print("\n" + markdown(report))
    partial.unlink()
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
