"""GPU suite driver: Phi-3-mini-architecture LoRA throughput, peak memory, MFU and largest micro-batch,
TRL at its best against this component with and without Liger; then the GPU-only tests (QLoRA, QDoRA,
ZeRO-3: loss goes down, merge works). Run by benchmarks/gpu_suite.sh; without CUDA it prints
"skipped: no CUDA" and exits 0 (CI checks that).

    python benchmarks/gpu_suite.py --part throughput zero3   # writes benchmarks/results/h200-<date>.json; ZeRO-3 test
    python benchmarks/gpu_suite.py --part quant              # the QLoRA / QDoRA tests (needs bitsandbytes)
    python benchmarks/gpu_suite.py --child <contender>   # one contender in its own process (used by --part throughput)
    python benchmarks/gpu_suite.py --rehearse --part throughput --results /tmp/r   # the same code on the CPU

`--rehearse` runs every step of the throughput part (child processes, both trainers, the token count,
the micro-batch probe, the report) on the CPU with a Phi-3 of the same architecture shrunk to a few MB,
so that a mistake in the suite shows up in CI, not in a device run of 15 minutes. Its numbers mean
nothing and it writes rehearsal-<date>.json; Liger is left out (Triton kernels need CUDA).

The model is built from Phi-3-mini's configuration (3.8B parameters) with random weights, in bf16; nothing
is downloaded. Each contender runs in its own process so its peak memory is its own. MFU counts
4 x parameters x tokens (LoRA: the frozen weights get no weight gradients) plus causal attention
(6 x layers x sequence x hidden per token, forward and backward), against 989 TFLOP/s (H200 dense bf16
specification) and against a bf16 matmul peak measured in the same run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

H200_DENSE_BF16_TFLOPS = 989.0
# microsoft/Phi-3-mini-4k-instruct's config.json, without downloading it.
PHI3_MINI = dict(vocab_size=32064, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                 rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=1, eos_token_id=32000,
                 pad_token_id=32000)
CONTENDERS = ("trl_best", "component", "component_liger")


@dataclass(frozen=True)
class Setup:
    device: str
    model: dict
    seq: int
    micro_batch: int  # examples per step for the throughput comparison (all contenders)
    warmup_steps: int
    timed_steps: int
    probe_batches: tuple[int, ...]
    contenders: tuple[str, ...]
    report_prefix: str


H200 = Setup(device="cuda", model=PHI3_MINI, seq=2048, micro_batch=4, warmup_steps=2, timed_steps=6,
             probe_batches=(4, 8, 16, 32, 64), contenders=CONTENDERS, report_prefix="h200")
REHEARSAL = Setup(device="cpu", model={**PHI3_MINI, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                       "num_attention_heads": 4, "num_key_value_heads": 4},
                  seq=64, micro_batch=2, warmup_steps=1, timed_steps=2, probe_batches=(1, 2, 4),
                  contenders=("trl_best", "component"), report_prefix="rehearsal")


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def matmul_peak_tflops(n: int = 8192, repeats: int = 10) -> float:
    import torch

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


def flops_per_token(params: int, layers: int, hidden: int, seq: int) -> float:
    return 4.0 * params + 6.0 * layers * seq * hidden


def synchronize(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def reset_peak_memory(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()


def peak_memory_bytes(device: str) -> int:
    """Peak GPU memory allocated by tensors; on the CPU (rehearsal) the process's peak resident set."""
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated()
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def attention() -> str:
    """flash_attention_2 where flash-attn is installed, else sdpa; the same for every contender."""
    import importlib.util

    return "flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa"


def build_model(setup: Setup):
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    torch.manual_seed(0)
    config = Phi3Config(**setup.model)
    with torch.device(setup.device):
        torch.set_default_dtype(torch.bfloat16)
        model = Phi3ForCausalLM._from_config(config, attn_implementation=attention())
        torch.set_default_dtype(torch.float32)
    model.config.use_cache = False
    return model


def synthetic_examples(n: int, setup: Setup) -> list[dict]:
    import torch

    generator = torch.Generator().manual_seed(0)
    seq, vocab = setup.seq, setup.model["vocab_size"]
    rows = []
    for _ in range(n):
        ids = torch.randint(100, vocab - 100, (seq,), generator=generator).tolist()
        labels = [-100] * (seq // 4) + ids[seq // 4:]  # a prompt quarter, not learned
        rows.append({"input_ids": ids, "labels": labels, "length": seq})
    return rows


def make_trainer(contender: str, setup: Setup, out: Path):
    """The contender's SFTTrainer: TRL's recommended settings, or the component's own plan and builders."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from maap_finetune.models.tiny import SAMPLE_DATA, build_tokenizer

    steps = setup.warmup_steps + setup.timed_steps
    model = build_model(setup)
    tokenizer = build_tokenizer([SAMPLE_DATA])  # only its pad token is used: the examples are token ids already
    data = Dataset.from_list(synthetic_examples(setup.micro_batch * (steps + 1), setup))
    if contender == "trl_best":
        args = SFTConfig(output_dir=str(out), per_device_train_batch_size=setup.micro_batch, max_steps=steps,
                         padding_free=True, max_length=None, gradient_checkpointing=False, bf16=True,
                         learning_rate=2e-4, lr_scheduler_type="cosine", warmup_steps=0.03, report_to="none",
                         save_strategy="no", logging_steps=10**6, disable_tqdm=True, use_cpu=setup.device == "cpu")
        peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
        trainer_class = SFTTrainer
    else:
        from maap_finetune.training import builders
        from maap_finetune.training.environment import Environment
        from maap_finetune.training.plan import resolve_plan
        from maap_finetune.training.session import _trainer_class
        from tests.helpers import argv_from_spec, load_entry

        config = load_entry("finetune").parse_args(argv_from_spec(
            "finetune", train_data=REPO, model_name="phi-3-mini-random", adapter=out / "a", mlflow_model=out / "m",
            checkpoints=out / "c", per_device_train_batch_size=setup.micro_batch, max_steps=steps,
            max_seq_length=setup.seq, use_liger_kernel="true" if contender == "component_liger" else "false",
            precision="bf16", save_steps=10**6, logging_steps=10**6))
        plan = resolve_plan(config, Environment.detect(), None)
        args = builders.build_sft_config(config, plan)
        peft_config = builders.build_peft_config(config)
        trainer_class = _trainer_class(plan, SFTTrainer)
    return trainer_class(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                         peft_config=peft_config)


class TokenCount:
    """Wraps a collator to count the tokens each batch carries (input and loss), so tokens/s is measured,
    not assumed from the micro-batch size, and a contender that drops or pads tokens shows."""

    def __init__(self, collator):
        self.collator = collator
        self.inputs: list[int] = []
        self.targets: list[int] = []

    def __call__(self, examples):
        batch = self.collator(examples)
        mask = batch.get("attention_mask")
        self.inputs.append(int(mask.sum()) if mask is not None else int(batch["input_ids"].numel()))
        self.targets.append(int((batch["labels"][..., 1:] != -100).sum()))
        return batch


def child(contender: str, setup: Setup, out: Path) -> dict:
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_end(self, args, state, control, **kwargs):
            synchronize(setup.device)
            self.times.append(time.perf_counter())

    trainer = make_trainer(contender, setup, out)
    counter = TokenCount(trainer.data_collator)
    trainer.data_collator = counter
    timer = StepTimer()
    trainer.add_callback(timer)
    reset_peak_memory(setup.device)
    output = trainer.train()
    peak = peak_memory_bytes(setup.device)
    timed = timer.times[setup.warmup_steps - 1:]
    seconds = timed[-1] - timed[0]
    # Batches of the timed steps; the dataloader may prefetch one more, which is not counted.
    steps = setup.warmup_steps + setup.timed_steps
    tokens = sum(counter.inputs[setup.warmup_steps:steps])
    params = sum(p.numel() for p in trainer.model.parameters())
    result = {
        "contender": contender, "micro_batch": setup.micro_batch, "seq": setup.seq,
        "tokens_per_step": counter.inputs[setup.warmup_steps:steps],
        "loss_tokens_per_step": counter.targets[setup.warmup_steps:steps],
        "tokens_per_second": tokens / seconds, "train_loss": output.training_loss,
        "peak_memory_gib": peak / 2**30, "parameters": params,
        "flops_per_token": flops_per_token(params, setup.model["num_hidden_layers"], setup.model["hidden_size"],
                                          setup.seq),
        "largest_micro_batch": largest_micro_batch(trainer, setup),
    }
    print("RESULT " + json.dumps(result), flush=True)
    return result


def largest_micro_batch(trainer, setup: Setup) -> int:
    """The largest of the probe sizes whose forward + backward fits, with the contender's collator and kernels."""
    import torch

    fits = 0
    rows = synthetic_examples(max(setup.probe_batches), setup)
    trainer.model.train()
    for size in setup.probe_batches:
        try:
            batch = trainer.data_collator(rows[:size])
            trainer.training_step(trainer.model, batch)
            trainer.model.zero_grad(set_to_none=True)
            fits = size
        except torch.OutOfMemoryError:
            break
        finally:
            if setup.device == "cuda":
                torch.cuda.empty_cache()
    return fits


class Deadline:
    """The suite's time budget: a device command is killed at its limit, so each child gets what is left and
    a part that cannot start in time is recorded as not run, with the report already written."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def child_environment() -> dict[str, str]:
    """This process's environment with the repository importable. PYTHONPATH is extended, never replaced:
    on the device machine it holds the carried wheels (benchmarks/gpu_suite.sh installs them in /tmp/site)."""
    path = [str(REPO / "src"), str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(path))}


def run_throughput(setup: Setup, report: dict, deadline: Deadline) -> None:
    """Fill report["throughput"]: each contender's tokens/s, peak memory, MFU and largest micro-batch."""
    import torch

    throughput = report["throughput"] = {"seq": setup.seq, "micro_batch": setup.micro_batch,
                                         "timed_steps": setup.timed_steps, "contenders": {}}
    if setup.device == "cuda":
        throughput["matmul_bf16_tflops"] = matmul_peak_tflops()
        torch.cuda.empty_cache()
    for contender in setup.contenders:
        command = [sys.executable, __file__, "--child", contender] + (["--rehearse"] if report["rehearsal"] else [])
        try:
            done = subprocess.run(command, capture_output=True, text=True, env=child_environment(),
                                  timeout=max(1.0, deadline.left()))
        except subprocess.TimeoutExpired as expired:
            throughput["contenders"][contender] = {"error": f"stopped at the suite's deadline after {expired.timeout:.0f} s"}
            print(f"{contender}: stopped at the suite's deadline", flush=True)
            continue
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            throughput["contenders"][contender] = {"error": done.stderr[-3000:]}
            print(f"{contender}: failed\n{done.stderr[-3000:]}", flush=True)
            continue
        result = json.loads(lines[-1][len("RESULT "):])
        if "matmul_bf16_tflops" in throughput:
            achieved = result["tokens_per_second"] * result["flops_per_token"] / 1e12
            result["mfu_vs_spec"] = achieved / H200_DENSE_BF16_TFLOPS
            result["mfu_vs_measured_matmul"] = achieved / throughput["matmul_bf16_tflops"]
        throughput["contenders"][contender] = result
        mfu = (f"MFU {result['mfu_vs_spec']:.1%} of spec / {result['mfu_vs_measured_matmul']:.1%} of measured "
               "matmul, " if "mfu_vs_spec" in result else "")
        print(f"{contender}: {result['tokens_per_second']:.0f} tokens/s, peak {result['peak_memory_gib']:.2f} GiB, "
              f"{mfu}largest micro-batch {result['largest_micro_batch']}, train loss {result['train_loss']:.4f}",
              flush=True)
    best = throughput["contenders"].get("trl_best", {})
    for result in throughput["contenders"].values():
        if "tokens_per_second" in result and "tokens_per_second" in best:
            result["speed_vs_trl_best"] = result["tokens_per_second"] / best["tokens_per_second"]
            result["memory_vs_trl_best"] = result["peak_memory_gib"] / best["peak_memory_gib"]


TESTS = {"zero3": "zero3", "quant": "quantized"}  # part -> pytest -k expression over tests/finetune/test_gpu.py


def run_grpo(report: dict, deadline: Deadline) -> int:
    """Fill report["grpo"]: Fine-Tune grpo on Phi-3-mini (bf16, LoRA, vLLM colocate where installed), measured by
    benchmarks/gpu_suite_grpo.py in its own process: seconds per step, completions/s, rewards, peak memory."""
    command = [sys.executable, str(REPO / "benchmarks" / "gpu_suite_grpo.py")] + (
        ["--rehearse"] if report["rehearsal"] else [])
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=child_environment(),
                              timeout=max(1.0, deadline.left()))
    except subprocess.TimeoutExpired as expired:
        report["grpo"] = {"error": f"stopped at the suite's deadline after {expired.timeout:.0f} s"}
        return 1
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        report["grpo"] = {"error": done.stderr[-3000:]}
        print(f"grpo: failed\n{done.stderr[-3000:]}", flush=True)
        return 1
    report["grpo"] = result = json.loads(lines[-1][len("RESULT "):])
    print(f"grpo ({result['generation']}, {result['precision']}): {result['seconds_per_step']:.2f} s/step, "
          f"reward {result['first_logged'].get('reward')} -> {result['last_logged'].get('reward')}", flush=True)
    return 0


def run_tests(part: str, report: dict, deadline: Deadline) -> int:
    """The GPU-only tests CI skips: they train (the loss goes down) and merge (parity passes). Each test's
    outcome and what it recorded (losses, precision, merge parity) go to report["tests"]."""
    import tempfile
    import xml.etree.ElementTree as ElementTree

    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        try:
            status = subprocess.call([sys.executable, "-m", "pytest", "tests/finetune/test_gpu.py", "-q", "-p",
                                      "no:cacheprovider", "-rs", "-k", TESTS[part], f"--junitxml={junit}",
                                      "-o", "junit_family=xunit1"], cwd=REPO, env=child_environment(),
                                     timeout=max(1.0, deadline.left()))
        except subprocess.TimeoutExpired as expired:
            report.setdefault("not_run", {})[part] = f"stopped at the suite's deadline after {expired.timeout:.0f} s"
            return 1
        cases = ElementTree.parse(junit).getroot().iter("testcase") if junit.is_file() else []
        for case in cases:
            outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
            detail = next((child.get("message", "") for child in case if child.tag in ("failure", "error", "skipped")), "")
            properties = {prop.get("name"): prop.get("value") for prop in case.iter("property")}
            report.setdefault("tests", {})[case.get("name")] = {
                "part": part, "outcome": outcome, "seconds": float(case.get("time", 0)), **properties,
                **({"message": detail[:2000]} if detail else {})}
    return status


def write_report(report: dict, path: Path) -> None:
    """Write the report, and into $OUT too when set (the device tool brings back what is there, also from a
    command killed at its limit)."""
    text = json.dumps(report, indent=2) + "\n"
    for target in filter(None, [path, os.environ.get("OUT") and Path(os.environ["OUT"]) / path.name]):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        print(f"wrote {target}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", nargs="+", choices=["throughput", *TESTS, "grpo"],
                        default=["throughput", *TESTS, "grpo"])
    parser.add_argument("--child", choices=CONTENDERS)
    parser.add_argument("--results", type=Path,
                        help="where the report goes (default benchmarks/results; a rehearsal's: a temporary folder)")
    parser.add_argument("--deadline_s", type=float, default=540,
                        help="the suite's budget in seconds (a device command runs at most 600)")
    parser.add_argument("--rehearse", action="store_true",
                        help="run the suite's code on the CPU with a shrunk model (CI); its numbers mean nothing")
    args = parser.parse_args(argv)
    if not args.rehearse and not cuda_available():
        print("skipped: no CUDA")
        return 0
    setup = REHEARSAL if args.rehearse else H200
    if args.results is None:
        import tempfile

        args.results = Path(tempfile.mkdtemp(prefix="gpu_suite_")) if args.rehearse else REPO / "benchmarks" / "results"
    if args.child:
        child(args.child, setup, Path("/tmp") / f"gpu_suite_{args.child}")
        return 0
    import torch

    report = {"date": datetime.date.today().isoformat(), "rehearsal": args.rehearse, "parts": args.part,
              "device": torch.cuda.get_device_name(0) if setup.device == "cuda" else "cpu",
              "torch": torch.__version__, "model": "Phi-3-mini architecture, random init, bf16, LoRA r=16 all-linear"
              + (" (shrunk: a CPU rehearsal, numbers mean nothing)" if args.rehearse else ""),
              "spec_bf16_tflops": H200_DENSE_BF16_TFLOPS}
    path = args.results / f"{setup.report_prefix}-{report['date']}.json"
    deadline = Deadline(args.deadline_s)
    status = 0
    for part in args.part:  # the report is rewritten after each part, so a run cut short keeps what it measured
        if deadline.left() < 30:
            report.setdefault("not_run", {})[part] = f"the suite's deadline ({args.deadline_s:.0f} s) was reached"
            status = 1
        elif part == "throughput":
            run_throughput(setup, report, deadline)
        elif part == "grpo":
            status = run_grpo(report, deadline) or status
        else:
            status = run_tests(part, report, deadline) or status
        write_report(report, path)
    return status


if __name__ == "__main__":
    sys.exit(main())
