"""The GPU suite's grpo part: Fine-Tune training_method grpo on the Phi-3-mini architecture (random init, bf16,
LoRA), generating with vLLM in colocate mode where a vllm in TRL's range is installed (use_vllm auto), on the
sample rft data and graders. Run by benchmarks/gpu_suite.py in its own process; prints one RESULT line.

    python benchmarks/gpu_suite_grpo.py             (CUDA; what gpu_suite.sh grpo runs)
    python benchmarks/gpu_suite_grpo.py --rehearse  (CPU, shrunk model: the code path only, numbers mean nothing)

The model's vocabulary is the tiny tokenizer's (data/sample has no Phi-3 tokenizer and the device machine has no
network); every other dimension is Phi-3-mini's (gpu_suite.PHI3_MINI).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

# steps, completions per prompt, completion tokens, prompts x generations per step; the rehearsal's are tiny
GPU_RUN = dict(max_steps=10, num_generations=8, max_completion_length=128, per_device_train_batch_size=16,
               max_seq_length=512, learning_rate=1e-4, use_vllm="auto", precision="bf16")
REHEARSAL_RUN = dict(max_steps=2, num_generations=2, max_completion_length=4, per_device_train_batch_size=2,
                     max_seq_length=256, learning_rate=1e-3, use_vllm="false", precision="fp32")


def build_model_folder(folder: Path, rehearse: bool) -> Path:
    """A Phi-3-mini-architecture model (random init, bf16) with the tiny tokenizer, saved as a Hugging Face folder."""
    from benchmarks.gpu_suite import H200, REHEARSAL, build_model
    from maap_finetune.models.tiny import SAMPLE_DATA, build_tokenizer

    tokenizer = build_tokenizer([SAMPLE_DATA])
    setup = REHEARSAL if rehearse else H200
    model_config = {**setup.model, "vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
                    "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    model = build_model(dataclasses.replace(setup, model=model_config))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def run(rehearse: bool) -> dict:
    from tests.finetune.test_grpo import GRADERS, write_prepared_rft
    from tests.helpers import argv_from_spec, load_entry

    work = Path(tempfile.mkdtemp(prefix="gpu_suite_grpo_"))
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlruns.db'}")
    started = time.perf_counter()
    model = build_model_folder(work / "model", rehearse)
    build_s = time.perf_counter() - started
    data = write_prepared_rft(work / "prepared")
    values = REHEARSAL_RUN if rehearse else GPU_RUN
    argv = argv_from_spec("finetune", train_data=data, model_path=model, training_method="grpo", graders=GRADERS,
                          peft_method="lora", logging_steps=1, adapter=work / "adapter",
                          mlflow_model=work / "mlflow_model", checkpoints=work / "checkpoints", **values)
    summary = load_entry("finetune").main(argv)
    steps = summary["steps_this_run"]
    from maap_finetune.training.environment import Environment
    from maap_finetune.training.plan import vllm_problem

    return {
        "settings": values, "model_build_s": round(build_s, 1),
        "generation": "vllm colocate" if summary["plan"]["use_vllm"] else "transformers",
        # why use_vllm auto chose transformers here (None when vLLM generated)
        "why_not_vllm": None if summary["plan"]["use_vllm"] else (
            "use_vllm false" if values["use_vllm"] == "false" else vllm_problem(Environment.detect())),
        "precision": summary["precision"], "steps": steps, "train_runtime_s": summary["train_runtime_s"],
        "seconds_per_step": summary["train_runtime_s"] / steps if steps else None,
        "completions_per_second": (steps * values["per_device_train_batch_size"] / summary["train_runtime_s"]
                                   if summary["train_runtime_s"] else None),
        "first_logged": summary["first_logged"], "last_logged": summary["last_logged"],
        "peak_gpu_memory_gib": summary.get("peak_gpu_memory_bytes", 0) / 2**30,
        "merge_parity_passed": summary["merge_parity"]["passed"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rehearse", action="store_true")
    args = parser.parse_args(argv)
    print("RESULT " + json.dumps(run(args.rehearse)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
