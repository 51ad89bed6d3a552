"""What Fine-Tune saves and what Evaluate holds, on a ~100M-parameter Phi-3-architecture base stored in bf16.

Builds a random Phi-3 (vocab 32064, the tiny model's tokenizer) saved in bf16, fine-tunes it with the
component at max_steps=1 (LoRA, CPU), then evaluates it with the component on the sample chats'
test split. Reports the merged `mlflow_model` folder's size and dtype, the adapter's dtype, and
Evaluate's peak RSS (its process tree sampled with psutil every 20 ms, and the child's own ru_maxrss).
`--repo` points at another checkout to measure the same on it (its src/ and tests/ are used):

    python benchmarks/dtype_memory.py --out benchmarks/results/dtype-memory.json
    git archive <commit> | tar -x -C /tmp/before && python benchmarks/dtype_memory.py --repo /tmp/before --out ...
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHI3_100M = dict(vocab_size=32064, hidden_size=768, intermediate_size=2048, num_hidden_layers=8,
                 num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=4096,
                 original_max_position_embeddings=4096, tie_word_embeddings=False)

BUILD = """
import json, sys, torch
from transformers import Phi3Config, Phi3ForCausalLM, GenerationConfig
from maap_finetune.models.tiny import build_tokenizer, SAMPLE_DATA
out, shape = sys.argv[1], json.loads(sys.argv[2])
tokenizer = build_tokenizer([SAMPLE_DATA])
end_id = tokenizer.convert_tokens_to_ids("<|end|>")
config = Phi3Config(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id, **shape)
torch.manual_seed(0)
model = Phi3ForCausalLM(config).to(torch.bfloat16)
model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
                                           eos_token_id=[tokenizer.eos_token_id, end_id])
model.save_pretrained(out)
tokenizer.save_pretrained(out)
print(json.dumps({"parameters": sum(p.numel() for p in model.parameters())}))
"""

STEP = """
import json, sys
sys.path.insert(0, sys.argv[1])
from tests.helpers import argv_from_spec, load_entry
step, values = sys.argv[2], json.loads(sys.argv[3])
if step == "prepare":
    from pathlib import Path
    from tests.finetune.conftest import write_prepared
    write_prepared(Path(values["folder"]))
else:
    load_entry(step).main(argv_from_spec(step, **values))
print("{}")
"""


def run_child(code: str, args: list[str], env: dict) -> dict:
    """Run a child; sample its process tree's summed RSS with psutil; read its ru_maxrss via wait4."""
    import psutil

    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=env)
    peak, done = [0], threading.Event()

    def sample():
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
                peak[0] = max(peak[0], sum(p.memory_info().rss for p in tree))
            except psutil.Error:
                pass
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    start = time.perf_counter()
    sampler.start()
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    sampler.join()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"child failed:\n{output.decode()[-4000:]}")
    result = json.loads(output.decode().strip().splitlines()[-1])
    result.update(wall_s=round(time.perf_counter() - start, 1), peak_tree_rss_mib=round(peak[0] / 2**20, 1),
                  ru_maxrss_mib=round(usage.ru_maxrss / 1024, 1))
    return result


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def safetensors_dtypes(folder: Path) -> dict[str, int]:
    """Tensor count per dtype over every .safetensors file under `folder` (read from the headers)."""
    counts: dict[str, int] = {}
    for path in folder.rglob("*.safetensors"):
        with open(path, "rb") as handle:
            header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
        for name, entry in header.items():
            if name != "__metadata__":
                counts[entry["dtype"]] = counts.get(entry["dtype"], 0) + 1
    return counts


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=REPO)
    parser.add_argument("--work", type=Path, default=None, help="keep the files here (default: a temp folder)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    repo = args.repo.resolve()
    work = args.work or Path(tempfile.mkdtemp(prefix="dtype-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": f"{repo / 'src'}:{repo}", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlruns.db'}", "MLFLOW_ENABLE_ASYNC_LOGGING": "false"}
    env.pop("MLFLOW_RUN_ID", None)
    base = work / "base"
    result: dict = {"repo": str(repo), "shape": PHI3_100M}
    if not (base / "config.json").is_file():
        result["base_parameters"] = run_child(BUILD, [str(base), json.dumps(PHI3_100M)], env)["parameters"]
    result["base_bytes"], result["base_dtypes"] = folder_bytes(base), safetensors_dtypes(base)
    prepared, out = work / "prepared", work / f"out-{repo.name}"
    run_child(STEP, [str(repo), "prepare", json.dumps({"folder": str(prepared)})], env)
    outputs = {name: str(out / name) for name in ("adapter", "mlflow_model", "checkpoints")}
    finetune = run_child(STEP, [str(repo), "finetune", json.dumps(
        {"train_data": str(prepared), "model_path": str(base), "max_steps": 1, **outputs})], env)
    merged = out / "mlflow_model"
    result.update(
        finetune_wall_s=finetune["wall_s"], finetune_peak_tree_rss_mib=finetune["peak_tree_rss_mib"],
        merged_bytes=folder_bytes(merged), merged_dtypes=safetensors_dtypes(merged),
        adapter_dtypes=safetensors_dtypes(out / "adapter"),
        merge_parity=json.loads((out / "adapter" / "training_summary.json").read_text())["merge_parity"],
    )
    evaluate = run_child(STEP, [str(repo), "evaluate", json.dumps(
        {"test_data": str(prepared), "mlflow_model": str(merged), "model_path": str(base),
         "evaluation": str(out / "evaluation")})], env)
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
    result.update(evaluate_wall_s=evaluate["wall_s"], evaluate_peak_tree_rss_mib=evaluate["peak_tree_rss_mib"],
                  evaluate_ru_maxrss_mib=evaluate["ru_maxrss_mib"],
                  evaluate_loss={"base": metrics["base"]["loss"], "finetuned": metrics["finetuned"]["loss"]})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
