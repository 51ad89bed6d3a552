"""Fine-Tune throughput: this component with its YAML defaults vs a plain TRL SFTTrainer + peft script.

The baseline is written the way the Phi-3 Cookbook and most tutorials write it: `SFTConfig` defaults
(batch 8, random batches padded to the longest, gradient checkpointing on, TRL's learning rate 2e-5),
`LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear")`, the conversational
dataset handed to SFTTrainer as is. Both train one epoch of the same generated chat data (widely
varying lengths) on the same small Phi-3-architecture model, on this machine's CPU, in fp32 (TRL's
bf16 default is turned off for the baseline: CPU bf16 autocast would only slow it down and is not
what we compare). Each run is a separate process (for a clean peak RSS) on one thread, alternated
A/B so both see the same background load; besides wall-clock tokens/s it reports tokens per CPU-second
of `trainer.train()`, which other processes on shared cores do not distort. Eval loss is computed the same way for both: mean loss on the assistant
tokens of a held-out split.

    python benchmarks/finetune_throughput.py              # 1 round, defaults vs baseline
    python benchmarks/finetune_throughput.py --rounds 2 --variants group_by_length
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

BENCH_CONFIG = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8,
                    num_key_value_heads=4)


# ---------------------------------------------------------------------------------------------
# setup: model and data
# ---------------------------------------------------------------------------------------------
def build_model(folder: Path) -> Path:
    import torch
    from transformers import GenerationConfig, Phi3Config, Phi3ForCausalLM

    from maap_finetune.models.tiny import TINY_CONFIG, build_tokenizer, SAMPLE_DATA

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


def write_prepared(folder: Path, train: list[dict], held_out: list[dict]) -> Path:
    from maap_finetune.data.prepared import write_metadata

    folder.mkdir(parents=True, exist_ok=True)
    splits = {"train": train, "validation": held_out, "test": held_out}
    for name, rows in splits.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_metadata(folder, task="chat", format="messages",
                   splits={k: {"file": f"{k}.jsonl", "rows": len(v)} for k, v in splits.items()})
    return folder


# ---------------------------------------------------------------------------------------------
# the two contenders, each run in its own process
# ---------------------------------------------------------------------------------------------
def assistant_eval_loss(model_dir: str, prepared: Path) -> float:
    from maap_finetune.data.prepared import load_prepared
    from maap_finetune.training.data import target_token_loss

    return target_token_loss(model_dir, load_prepared(prepared).rows("validation"), 4096, "validation")


def run_baseline(model_dir: str, prepared: Path, out: Path) -> dict:
    """The tutorial script: SFTTrainer + LoraConfig with defaults."""
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from maap_finetune.training.monitoring import CountingCollator, TokenCounter

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    data = load_dataset("json", data_files={"train": str(prepared / "train.jsonl")})["train"]
    args = SFTConfig(output_dir=str(out / "baseline"), num_train_epochs=1, bf16=False, report_to="none",
                     save_strategy="no", use_cpu=True, disable_tqdm=True)
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                             task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                         peft_config=peft_config)
    counter = TokenCounter()
    trainer.data_collator = CountingCollator(trainer.data_collator, counter)
    metrics = trainer.train().metrics
    merged = trainer.model.merge_and_unload()
    merged.save_pretrained(out / "baseline_model")
    tokenizer.save_pretrained(out / "baseline_model")
    return {
        "tokens": counter.tokens,
        "padding_ratio": counter.padding_ratio,
        "train_runtime_s": metrics["train_runtime"],
        "eval_loss": assistant_eval_loss(str(out / "baseline_model"), prepared),
    }


def run_component(model_dir: str, prepared: Path, out: Path, overrides: dict) -> dict:
    """This component, through its entry script with the YAML defaults (plus `overrides`)."""
    from tests.helpers import argv_from_spec, load_entry

    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{out / 'mlruns.db'}")
    name = "component" + "".join(f"_{v}" for v in overrides.values())
    summary = load_entry("finetune").main(argv_from_spec(
        "finetune", train_data=prepared, model_path=model_dir, adapter=out / name / "adapter",
        mlflow_model=out / name / "mlflow_model", checkpoints=out / name / "checkpoints", **overrides))
    return {
        "tokens": summary["tokens"],
        "padding_ratio": summary["padding_ratio"],
        "train_runtime_s": summary["train_runtime_s"],
        "eval_loss": assistant_eval_loss(str(out / name / "mlflow_model"), prepared),
    }


class _CpuClock:
    """CPU seconds this process spent inside trainer.train() (robust to other load on shared cores)."""

    spent = 0.0


def _install_cpu_clock() -> None:
    from transformers import Trainer

    original = Trainer.train

    def timed(self, *args, **kwargs):
        before = resource.getrusage(resource.RUSAGE_SELF)
        try:
            return original(self, *args, **kwargs)
        finally:
            after = resource.getrusage(resource.RUSAGE_SELF)
            _CpuClock.spent += (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

    Trainer.train = timed


def child(kind: str, model_dir: str, prepared: str, out: str, overrides: str) -> None:
    import logging

    import torch

    logging.disable(logging.WARNING)
    torch.set_num_threads(1)  # one core each: CPU seconds then measure compute, whatever else runs here
    _install_cpu_clock()
    started = time.perf_counter()
    if kind == "baseline":
        result = run_baseline(model_dir, Path(prepared), Path(out))
    else:
        result = run_component(model_dir, Path(prepared), Path(out), json.loads(overrides))
    result["wall_s"] = time.perf_counter() - started
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["tokens_per_second"] = result["tokens"] / result["train_runtime_s"]
    result["train_cpu_s"] = _CpuClock.spent
    result["tokens_per_cpu_second"] = result["tokens"] / _CpuClock.spent
    print("RESULT " + json.dumps(result), flush=True)


def spawn(kind: str, model_dir: Path, prepared: Path, out: Path, overrides: dict | None = None) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": f"{REPO / 'src'}:{REPO}"}
    done = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(model_dir), str(prepared), str(out),
         json.dumps(overrides or {})],
        env=env, capture_output=True, text=True,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{kind} failed:\n{done.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:7])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train_rows", type=int, default=96)
    parser.add_argument("--eval_rows", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=1, help="A/B rounds; results are per-round and averaged")
    parser.add_argument("--variants", nargs="*", default=[], choices=["group_by_length", "padding_free", "packing", "padded"],
                        help="also run the component with these batching values")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = build_model(tmp / "model")
        chats = generate_chats(args.train_rows + args.eval_rows, seed=0)
        prepared = write_prepared(tmp / "prepared", chats[: args.train_rows], chats[args.train_rows :])
        print(f"model: Phi-3 architecture {BENCH_CONFIG}; data: {args.train_rows} train / {args.eval_rows} eval chats;"
              f" cpu cores: {os.cpu_count()}")
        contenders = [("baseline", None), ("component", {})] + [("component", {"batching": v}) for v in args.variants]
        results: dict[str, list[dict]] = {}
        for round_index in range(args.rounds):
            order = contenders if round_index % 2 == 0 else contenders[::-1]
            for kind, overrides in order:
                label = kind + "".join(f" batching={v}" for v in (overrides or {}).values())
                out = tmp / f"round{round_index}"
                out.mkdir(exist_ok=True)
                result = spawn(kind, model_dir, prepared, out, overrides)
                results.setdefault(label, []).append(result)
                print(f"round {round_index} {label:34s} tokens/s {result['tokens_per_second']:7.0f}  tokens/CPU-s "
                      f"{result['tokens_per_cpu_second']:7.0f}  padding "
                      f"{result['padding_ratio']:.2f}  train {result['train_runtime_s']:6.1f} s  peak RSS "
                      f"{result['peak_rss_mb']:6.0f} MB  eval loss {result['eval_loss']:.4f}", flush=True)

    def mean(label, key):
        return sum(r[key] for r in results[label]) / len(results[label])

    base_tps, base_loss = mean("baseline", "tokens_per_second"), mean("baseline", "eval_loss")
    base_cpu = mean("baseline", "tokens_per_cpu_second")
    print("\nsummary (means over rounds; wall-clock tokens/s is noisy on shared cores, tokens per CPU-second is not)")
    for label in results:
        tps, loss, cpu = mean(label, "tokens_per_second"), mean(label, "eval_loss"), mean(label, "tokens_per_cpu_second")
        print(f"  {label:34s} non-padding tokens/s {tps:7.0f} ({tps / base_tps:4.2f}x)  per CPU-s {cpu:7.0f} "
              f"({cpu / base_cpu:4.2f}x vs baseline)  "
              f"peak RSS {mean(label, 'peak_rss_mb'):6.0f} MB  eval loss {loss:.4f} "
              f"({(loss - base_loss) / base_loss:+.1%} vs baseline)")


if __name__ == "__main__":
    main()
