"""Test examples, token-weighted loss and batched greedy generation for one causal LM.

An example is a prompt and the reference the model should produce:
- `messages` rows (every supervised task): the prompt is every turn but the last, rendered with the
  tokenizer's chat template and the generation prompt; the reference is the last (assistant) turn.
  Loss counts the reference tokens only (the template's closing tokens of that turn included).
- `preference` rows: the prompt, and the chosen answer as the reference (as a `messages` row).
- `text` rows: loss counts every token; for generation the first half of the text (in tokens) is
  the prompt and the rest is the reference.

Memory and time stay bounded: examples are sorted by length and run in batches of `batch_size`,
sequences are cut at `max_seq_length`, and generation stops after `max_new_tokens`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maap_finetune.common.errors import UserError

_ROLES = {"system", "user", "assistant", "tool"}


@dataclass
class Example:
    line: int  # 1-based line in the split file, for error messages and the report
    reference: str
    messages: list[dict[str, Any]] | None = None  # the full conversation (messages format)
    text: str | None = None  # the full text (text format)
    tools: list[dict] | None = None  # the row's tool definitions, for the chat template
    reference_calls: list | None = None  # (name, arguments) when the reference is a tool call
    row: dict[str, Any] | None = None  # rft: the prepared row, which graders read; its messages are all prompt

    @property
    def prompt_messages(self) -> list[dict[str, str]]:
        if self.row is not None:
            return self.messages
        return self.messages[:-1] if self.messages is not None else []


def read_examples(path: str | Path, data_format: str, limit: int) -> list[Example]:
    """The first `limit` rows of a prepared split as examples; a malformed row is a UserError."""
    path = Path(path)
    examples: list[Example] = []
    with open(path, encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            if len(examples) >= limit:
                break
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except ValueError as err:
                raise UserError(f"{path}, line {number}: invalid JSON ({err})") from None
            examples.append(_example(row, data_format, path, number))
    return examples


def _example(row: Any, data_format: str, path: Path, number: int) -> Example:
    where = f"{path}, line {number}"
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if data_format == "preference":
        if not isinstance(row.get("prompt"), list) or not isinstance(row.get("chosen"), list):
            raise UserError(f"{where}: a preference row needs prompt and chosen message lists")
        row = {"messages": [*row["prompt"], *row["chosen"]], "tools": row.get("tools")}
    if data_format == "text":
        text = row.get("text")
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{where}: field 'text' must be a non-empty string")
        return Example(line=number, reference="", text=text)
    if data_format == "rft":
        return _rft_example(row, where, number)
    messages = row.get("messages")
    if not isinstance(messages, list) or len(messages) < 2:
        raise UserError(f"{where}: field 'messages' must list at least a prompt turn and the assistant turn")
    for index, message in enumerate(messages):
        if isinstance(message, dict) and message.get("tool_calls") and message.get("content") is None:
            messages[index] = message = {**message, "content": ""}  # a pure tool-call turn
        if (
            not isinstance(message, dict)
            or message.get("role") not in _ROLES
            or not isinstance(message.get("content"), str)
        ):
            raise UserError(f"{where}: messages[{index}] must have a role in {sorted(_ROLES)} and string content")
    if messages[-1]["role"] != "assistant":
        raise UserError(f"{where}: the last message must be the assistant turn (the reference), got role "
                        f"{messages[-1]['role']!r}")
    from maap_finetune.evaluation.tool_calls import reference_calls

    calls = reference_calls(messages[-1])
    reference = messages[-1]["content"]
    if calls is not None:  # shown in the report as the calls' JSON
        reference = json.dumps([{"name": n, "arguments": a} for n, a in calls], ensure_ascii=False)
    return Example(line=number, reference=reference, messages=messages, tools=row.get("tools") or None,
                   reference_calls=calls)


def _rft_example(row: dict, where: str, number: int) -> Example:
    """An rft row: a prompt ending with the user turn; no reference answer (the graders judge)."""
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where}: field 'messages' must list the prompt turns")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _ROLES \
                or not isinstance(message.get("content"), str):
            raise UserError(f"{where}: messages[{index}] must have a role in {sorted(_ROLES)} and string content")
    if messages[-1]["role"] != "user":
        raise UserError(f"{where}: an rft prompt must end with the user turn, got role {messages[-1]['role']!r}")
    return Example(line=number, reference="", messages=messages, tools=row.get("tools") or None, row=row)


# --- loading -------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    device: Any


def load_model(model_dir: str, tokenizer_dir: str, trust_remote_code: bool, device: str | None = None) -> LoadedModel:
    """Load a causal LM for inference: bf16 on a GPU that supports it, float32 on the CPU.

    `device` None picks CUDA when present.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if device == "cpu" or (device is None and not torch.cuda.is_available()):
        device, dtype = torch.device("cpu"), torch.float32
    elif torch.cuda.is_available():
        device = torch.device("cuda")
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        raise UserError(f"device {device!r} asked for but CUDA is not available")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, trust_remote_code=trust_remote_code)
    model.to(device)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, device=device)


# --- tokenization --------------------------------------------------------------------------------


def _encode(tokenizer, text: str) -> list[int]:
    # Chat templates write the BOS token themselves, so the tokenizer must not add another.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _render(tokenizer, messages, add_generation_prompt: bool, tools: list | None = None) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("the model's tokenizer has no chat template; chat-format test data needs one")
    return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def loss_sequence(tokenizer, example: Example, max_seq_length: int) -> tuple[list[int], int, bool]:
    """(input ids, index of the first scored token, whether it was cut at max_seq_length)."""
    if example.text is not None:
        ids = _encode(tokenizer, example.text)
        if tokenizer.bos_token_id is not None and (not ids or ids[0] != tokenizer.bos_token_id):
            ids = [tokenizer.bos_token_id] + ids
        if tokenizer.eos_token_id is not None:
            ids = ids + [tokenizer.eos_token_id]
        start = 1
    else:
        full = _encode(tokenizer, _render(tokenizer, example.messages, False, example.tools))
        prompt = _encode(tokenizer, _render(tokenizer, example.prompt_messages, True, example.tools))
        start = 0
        while start < min(len(prompt), len(full)) and prompt[start] == full[start]:
            start += 1
        ids = full
    truncated = len(ids) > max_seq_length
    return ids[:max_seq_length], max(start, 1), truncated


def generation_prompt(tokenizer, example: Example, max_prompt_tokens: int) -> tuple[list[int], str]:
    """(prompt ids, reference) for generation; long prompts keep their end."""
    if example.text is not None:
        ids = _encode(tokenizer, example.text)
        cut = max(1, len(ids) // 2)
        prompt, rest = ids[:cut], ids[cut:]
        if tokenizer.bos_token_id is not None:
            prompt = [tokenizer.bos_token_id] + prompt
        reference = tokenizer.decode(rest, skip_special_tokens=True).strip()
    else:
        prompt = _encode(tokenizer, _render(tokenizer, example.prompt_messages, True, example.tools))
        reference = example.reference
    return prompt[-max_prompt_tokens:], reference


def prompt_text(example: Example, tokenizer) -> str:
    """The prompt as the report shows it (the last user turn, or the text's first half)."""
    if example.text is not None:
        ids = _encode(tokenizer, example.text)
        return tokenizer.decode(ids[: max(1, len(ids) // 2)], skip_special_tokens=True).strip()
    return example.prompt_messages[-1]["content"]


# --- loss ----------------------------------------------------------------------------------------


@dataclass
class LossResult:
    loss: float
    perplexity: float
    scored_tokens: int
    truncated_examples: int
    skipped_examples: int  # nothing left to score after truncation
    per_example_loss: list[float | None] = field(default_factory=list)


def compute_loss(loaded: LoadedModel, examples: Sequence[Example], max_seq_length: int, batch_size: int) -> LossResult:
    """Token-weighted mean cross-entropy over the reference tokens of every example."""
    import torch

    tokenizer, model = loaded.tokenizer, loaded.model
    sequences = [loss_sequence(tokenizer, ex, max_seq_length) for ex in examples]
    per_example: list[float | None] = [None] * len(examples)
    total_nll, total_tokens, skipped = 0.0, 0, 0
    order = sorted(range(len(examples)), key=lambda i: len(sequences[i][0]))
    usable = [i for i in order if sequences[i][1] < len(sequences[i][0])]
    skipped = len(order) - len(usable)
    pad_id = tokenizer.pad_token_id
    for offset in range(0, len(usable), batch_size):
        batch = usable[offset : offset + batch_size]
        width = max(len(sequences[i][0]) for i in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        for row, i in enumerate(batch):
            ids, start, _ = sequences[i]
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention[row, : len(ids)] = 1
            labels[row, start : len(ids)] = torch.tensor(ids[start:])
        input_ids, attention, labels = (t.to(loaded.device) for t in (input_ids, attention, labels))
        with torch.no_grad():
            logits = model(input_ids=input_ids, attention_mask=attention).logits
            shift_labels = labels[:, 1:]
            # One row at a time in float32: a batch of large-vocabulary logits upcast at once would
            # double the peak memory of the forward pass.
            row_nll = torch.stack([
                torch.nn.functional.cross_entropy(
                    logits[row, :-1, :].float(), shift_labels[row], ignore_index=-100, reduction="sum"
                )
                for row in range(len(batch))
            ])
            row_tokens = (shift_labels != -100).sum(dim=1)
            del logits
        for row, i in enumerate(batch):
            per_example[i] = float(row_nll[row] / row_tokens[row])
        total_nll += float(row_nll.sum())
        total_tokens += int(row_tokens.sum())
    loss = total_nll / total_tokens if total_tokens else math.nan
    return LossResult(
        loss=loss,
        perplexity=math.exp(loss) if total_tokens and loss < 700 else math.inf if total_tokens else math.nan,
        scored_tokens=total_tokens,
        truncated_examples=sum(1 for s in sequences if s[2]),
        skipped_examples=skipped,
        per_example_loss=per_example,
    )


# --- generation ----------------------------------------------------------------------------------


def generate(
    loaded: LoadedModel,
    examples: Sequence[Example],
    max_new_tokens: int,
    max_seq_length: int,
    batch_size: int,
) -> tuple[list[str], list[str]]:
    """Greedy generations and their references, batched with left padding."""
    max_prompt = max(1, max_seq_length - max_new_tokens)
    prompts = [generation_prompt(loaded.tokenizer, ex, max_prompt) for ex in examples]
    generated = generate_ids(loaded, [ids for ids, _ in prompts], max_new_tokens, batch_size)
    outputs = [loaded.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in generated]
    return outputs, [reference for _, reference in prompts]


def generate_ids(loaded: LoadedModel, prompts: Sequence[list[int]], max_new_tokens: int,
                 batch_size: int, logprobs: list | None = None) -> list[list[int]]:
    """Greedy continuations of token-id prompts, batched with left padding: the new ids, up to and
    including the first stop token, without the padding after it. With `logprobs` (a list), each
    continuation's per-token log-probabilities under the model are appended to it, in prompt order."""
    import torch

    tokenizer, model = loaded.tokenizer, loaded.model
    continuations: list[list[int]] = [[] for _ in prompts]
    token_logprobs: list[list[float]] = [[] for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    config = _greedy_config(model, tokenizer, max_new_tokens)
    stops = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    for offset in range(0, len(order), batch_size):
        batch = order[offset : offset + batch_size]
        width = max(len(prompts[i]) for i in batch)
        input_ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            ids = prompts[i]
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention[row, width - len(ids) :] = 1
        with torch.no_grad():
            generated = model.generate(
                input_ids=input_ids.to(loaded.device),
                attention_mask=attention.to(loaded.device),
                generation_config=config,
                output_logits=logprobs is not None,
                return_dict_in_generate=True,
            )
        for row, i in enumerate(batch):
            new = generated.sequences[row, width:].tolist()
            stop = next((k for k, token in enumerate(new) if token in stops), None)
            continuations[i] = new if stop is None else new[: stop + 1]
            if logprobs is not None:
                token_logprobs[i] = [float(torch.log_softmax(generated.logits[k][row].float(), dim=-1)[token])
                                     for k, token in enumerate(continuations[i])]
    if logprobs is not None:
        logprobs.extend(token_logprobs)
    return continuations


def render_user_prompt(tokenizer, prompt: str) -> list[int]:
    """`prompt` as one user turn with the tokenizer's chat template and generation prompt, or as plain text
    after BOS when it has no template."""
    if getattr(tokenizer, "chat_template", None):
        return _encode(tokenizer, _render(tokenizer, [{"role": "user", "content": prompt}], True))
    ids = _encode(tokenizer, prompt)
    return [tokenizer.bos_token_id, *ids] if tokenizer.bos_token_id is not None else ids


def _greedy_config(model, tokenizer, max_new_tokens: int):
    """The model's generation config (its stop tokens) made greedy and bounded."""
    import copy

    config = copy.deepcopy(model.generation_config)
    config.do_sample = False
    config.num_beams = 1
    for name in ("temperature", "top_p", "top_k", "typical_p", "min_p"):
        if hasattr(config, name):
            setattr(config, name, None)
    config.max_new_tokens = max_new_tokens
    config.max_length = None
    config.pad_token_id = tokenizer.pad_token_id
    if config.eos_token_id is None:
        config.eos_token_id = tokenizer.eos_token_id
    return config
