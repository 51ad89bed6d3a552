"""Build a tiny Phi-3-architecture model and tokenizer locally, with no network.

The local run and the tests fine-tune this model: same architecture class as Phi-3
(`Phi3ForCausalLM`), same chat markup (`<|user|>`, `<|assistant|>`, `<|end|>`), a byte-level
BPE tokenizer trained on the fly on the repo's sample data, and random weights from a seed.
The build is deterministic: the same seed and corpus give the same files.

    python -m maap_finetune.models.tiny --output_dir .maap/tiny-phi3
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
SAMPLE_DATA = REPO_ROOT / "data" / "sample" / "chat.jsonl"

SPECIAL_TOKENS = ["<unk>", "<s>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

# Phi-3's chat markup, plus function calling written the way Phi-4-mini's template writes it
# (`<|tool|>[definitions]<|/tool|>` in the system turn, `<|tool_call|>[calls]<|/tool_call|>` in the
# assistant turn, results as a `<|tool|>` turn), so the local run can train on tool-calling data.
# Conversations without tools render exactly as before. The {% generation %} markers let TRL's
# assistant_only_loss find the assistant tokens (the `<|end|>` that closes each turn included).
TOOLS_BLOCK = "{{ '<|tool|>' + (tools | tojson) + '<|/tool|>' }}"
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if tools and messages[0]['role'] != 'system' %}{{ '<|system|>\n' }}" + TOOLS_BLOCK + "{{ '<|end|>\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' }}{% generation %}{{ message['content'] }}"
    "{% if message['tool_calls'] is defined and message['tool_calls'] %}{{ '<|tool_call|>[' }}"
    "{% for call in message['tool_calls'] %}{% if not loop.first %}{{ ', ' }}{% endif %}"
    "{{ '{\"name\": ' + (call['function']['name'] | tojson) + ', \"arguments\": ' + call['function']['arguments'] + '}' }}"
    "{% endfor %}{{ ']<|/tool_call|>' }}{% endif %}"
    "{{ '<|end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% elif message['role'] == 'system' and tools %}"
    "{{ '<|system|>\n' + message['content'] }}" + TOOLS_BLOCK + "{{ '<|end|>\n' }}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

TINY_CONFIG = dict(
    hidden_size=64,
    intermediate_size=192,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    original_max_position_embeddings=4096,
    rope_theta=10000.0,
    tie_word_embeddings=False,
)


def _corpus(paths: Iterable[Path]) -> Iterable[str]:
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                line = line.strip()
                if not line:
                    continue
                row = json.loads(line)
                for message in row.get("messages", []):
                    yield message.get("content", "")


def build_tokenizer(corpus_files: Sequence[Path], vocab_size: int = 1024):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(corpus_files), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="<|endoftext|>",
        unk_token="<unk>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
        model_max_length=TINY_CONFIG["max_position_embeddings"],
        padding_side="right",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_phi3(output_dir: str | Path, seed: int = 0, corpus_files: Sequence[Path] | None = None) -> Path:
    """Write a tiny random-init Phi-3 model and its tokenizer to `output_dir` (Hugging Face layout)."""
    import torch
    from transformers import GenerationConfig, Phi3Config, Phi3ForCausalLM

    output_dir = Path(output_dir)
    tokenizer = build_tokenizer(corpus_files or [SAMPLE_DATA])
    end_id = tokenizer.convert_tokens_to_ids("<|end|>")
    config = Phi3Config(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **TINY_CONFIG,
    )
    torch.manual_seed(seed)
    model = Phi3ForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, end_id],
        pad_token_id=tokenizer.pad_token_id,
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    return output_dir


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", required=True, type=Path)
    parser.add_argument("--seed", type=int, required=True)
    args = parser.parse_args(argv)
    print(build_tiny_phi3(args.output_dir, seed=args.seed))


if __name__ == "__main__":
    main()
