"""CPU inference: ONNX Runtime GenAI int4 and fp32 against transformers fp32, side by side in one run.

A Phi-3-architecture model with random weights is built locally (no download): Phi-3-mini's vocabulary
size and head layout, scaled down in width and depth so that three contenders finish in a few minutes
on a 2-core machine. The Export ONNX component's builder code exports it (int4 with the component's
defaults: block size 32, accuracy level 4 on CPU; and fp32). Each contender runs in its own process,
one after the other, on the same prompts: greedy decoding of exactly `--new-tokens` tokens (EOS off,
so every contender decodes the same number), after one untimed warm-up generation. The baseline is
transformers' strongest plain CPU setting: fp32, KV cache, SDPA attention, `torch.inference_mode`,
all cores.

    python benchmarks/onnx_inference.py                     # defaults below; ~3-5 minutes on 2 cores
    python benchmarks/onnx_inference.py --layers 4 --hidden 768 --new-tokens 32

Prints time to first token and decode tokens/s per contender and the ratios to transformers, and
writes them to benchmarks/results/onnx_inference.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))
RESULTS = REPO / "benchmarks" / "results" / "onnx_inference.json"
PHI3_VOCAB = 32064


def build_model(folder: Path, args) -> Path:
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    from maap_finetune.models.tiny import SAMPLE_DATA, TINY_CONFIG, build_tokenizer

    tokenizer = build_tokenizer([SAMPLE_DATA])
    config = Phi3Config(**{**TINY_CONFIG, "hidden_size": args.hidden, "intermediate_size": args.hidden * 8 // 3,
                           "num_hidden_layers": args.layers, "num_attention_heads": args.hidden // 96,
                           "num_key_value_heads": args.hidden // 96},
                        vocab_size=PHI3_VOCAB, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = Phi3ForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def prompts(n: int, length: int) -> list[list[int]]:
    import random

    rng = random.Random(0)
    return [[1] + [rng.randrange(10, 700) for _ in range(length - 1)] for _ in range(n)]


def run_transformers(model_dir: str, prompt_ids: list[list[int]], new_tokens: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa").eval()

    def generate(ids, n):
        with torch.inference_mode():
            return model.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                  eos_token_id=None, pad_token_id=0, use_cache=True)

    generate(prompt_ids[0], 4)  # warm-up
    ttft, decode_s = [], 0.0
    for ids in prompt_ids:
        start = time.perf_counter()
        generate(ids, 1)
        first = time.perf_counter() - start
        start = time.perf_counter()
        out = generate(ids, new_tokens)
        total = time.perf_counter() - start
        assert out.shape[1] == len(ids) + new_tokens
        ttft.append(first)
        decode_s += total - first
    return {"time_to_first_token_s": sum(ttft) / len(ttft), "decode_tokens_per_s": len(prompt_ids) * (new_tokens - 1) / decode_s}


def run_genai(onnx_dir: str, prompt_ids: list[list[int]], new_tokens: int) -> dict:
    import onnxruntime_genai as og

    model = og.Model(onnx_dir)

    def generate(ids, n):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + n, min_length=len(ids) + n, do_sample=False)
        generator = og.Generator(model, params)
        start = time.perf_counter()
        generator.append_tokens(ids)
        generator.generate_next_token()
        first = time.perf_counter()
        count = 1
        while not generator.is_done():
            generator.generate_next_token()
            count += 1
        return first - start, time.perf_counter() - first, count

    generate(prompt_ids[0], 4)  # warm-up
    ttft, decode_s = [], 0.0
    for ids in prompt_ids:
        first, rest, count = generate(ids, new_tokens)
        assert count == new_tokens, count
        ttft.append(first)
        decode_s += rest
    return {"time_to_first_token_s": sum(ttft) / len(ttft), "decode_tokens_per_s": len(prompt_ids) * (new_tokens - 1) / decode_s}


def child(kind: str, path: str, prompts_json: str, new_tokens: int) -> None:
    ids = json.loads(prompts_json)
    result = run_transformers(path, ids, new_tokens) if kind == "transformers" else run_genai(path, ids, new_tokens)
    print("RESULT " + json.dumps(result), flush=True)


def measure(kind: str, path: Path, ids, new_tokens: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", kind, str(path), json.dumps(ids), str(new_tokens)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": f"{REPO / 'src'}:{REPO}"})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{kind} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:5], int(sys.argv[5]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1152, help="hidden size (a multiple of 96, Phi-3's head size)")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--note", default="", help="free text saved with the results (machine load, ...)")
    args = parser.parse_args(argv)

    from maap_finetune.export import builder

    ids = prompts(args.prompts, args.prompt_tokens)
    with tempfile.TemporaryDirectory(prefix="maap-onnx-bench-") as tmp:
        tmp = Path(tmp)
        hf = build_model(tmp / "hf", args)
        params = sum(p.numel() for p in __import__("safetensors.torch", fromlist=["load_file"]).load_file(
            str(hf / "model.safetensors")).values())
        exports, build_s = {}, {}
        for precision in ("int4", "fp32"):
            start = time.perf_counter()
            exports[precision] = builder.build(hf, tmp / precision, precision, "cpu", tmp / "cache", 32, None)
            build_s[precision] = time.perf_counter() - start
        results = {
            "transformers fp32": measure("transformers", hf, ids, args.new_tokens),
            "onnxruntime-genai int4": measure("genai", exports["int4"], ids, args.new_tokens),
            "onnxruntime-genai fp32": measure("genai", exports["fp32"], ids, args.new_tokens),
        }
        sizes = {"pytorch fp32": builder.folder_bytes(hf), **{f"onnx {p}": builder.folder_bytes(d) for p, d in exports.items()}}
    base = results["transformers fp32"]
    for result in results.values():
        result["decode_ratio_to_transformers"] = result["decode_tokens_per_s"] / base["decode_tokens_per_s"]
        result["ttft_ratio_to_transformers"] = base["time_to_first_token_s"] / result["time_to_first_token_s"]
    report = {
        "model": {"architecture": "Phi3ForCausalLM", "parameters": params, "hidden_size": args.hidden,
                  "layers": args.layers, "vocab_size": PHI3_VOCAB},
        "workload": {"prompts": args.prompts, "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens},
        "machine": {"cpus": os.cpu_count(), "load_average_at_end": os.getloadavg(), "note": args.note},
        "build_seconds": build_s, "size_bytes": sizes, "results": results,
    }
    print(f"{'contender':<24} {'TTFT s':>8} {'decode tok/s':>13} {'decode x':>9} {'TTFT x':>7}")
    for name, r in results.items():
        print(f"{name:<24} {r['time_to_first_token_s']:8.3f} {r['decode_tokens_per_s']:13.1f} "
              f"{r['decode_ratio_to_transformers']:9.2f} {r['ttft_ratio_to_transformers']:7.2f}")
    print(f"{params / 1e6:.0f}M parameters; sizes MB: " + ", ".join(f"{k} {v / 1e6:.0f}" for k, v in sizes.items()))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
