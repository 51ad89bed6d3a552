"""The loss mask on real tokenized examples: prompt tokens are -100; every assistant token and the
end-of-turn / EOS tokens are learned. Checked with the tiny model's template (which has
{% generation %} markers) and with Phi-3's released template (which has none)."""

from __future__ import annotations

import pytest

from maap_finetune.training.data import DEFAULT_CHAT_TEMPLATE, IGNORE_INDEX, tokenize_messages, tokenize_rows

CONVERSATION = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Do you sell helmets?"},
    {"role": "assistant", "content": "Yes, from 39 dollars."},
    {"role": "user", "content": "In red?"},
    {"role": "assistant", "content": "Red and black."},
]


@pytest.fixture
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _learned_text(tokenizer, ids, labels) -> str:
    return "".join(tokenizer.decode([i]) for i, label in zip(ids, labels) if label != IGNORE_INDEX)


def _prompt_text(tokenizer, ids, labels) -> str:
    return "".join(tokenizer.decode([i]) for i, label in zip(ids, labels) if label == IGNORE_INDEX)


def test_phi3_template_without_generation_markers(tokenizer):
    from trl.chat_template_utils import phi3_chat_template  # Phi-3-mini's released template

    assert "{% generation %}" not in phi3_chat_template
    tokenizer.chat_template = phi3_chat_template
    ids, labels = tokenize_messages(tokenizer, CONVERSATION, train_on_prompt=False)
    assert len(ids) == len(labels)
    learned = _learned_text(tokenizer, ids, labels)
    assert learned == "Yes, from 39 dollars.<|end|>\nRed and black.<|end|>\n<|endoftext|>"
    prompt = _prompt_text(tokenizer, ids, labels)
    for text in ("Answer briefly.", "Do you sell helmets?", "In red?", "<|user|>", "<|assistant|>", "<|system|>"):
        assert text in prompt
    # Labels equal the input ids wherever they are learned.
    assert all(label in (IGNORE_INDEX, i) for i, label in zip(ids, labels))
    end_id = tokenizer.convert_tokens_to_ids("<|end|>")
    assert [label for label in labels if label == end_id] == [end_id, end_id]  # both assistant turns' end-of-turn
    assert labels[-1] == tokenizer.eos_token_id  # the EOS the template appends is learned


def test_tiny_template_agrees_with_generation_markers(tokenizer):
    """Where a template has {% generation %} markers, our mask equals transformers' assistant mask,
    plus the newline the template prints after each <|end|>."""
    ids, labels = tokenize_messages(tokenizer, CONVERSATION, train_on_prompt=False)
    reference = tokenizer.apply_chat_template(CONVERSATION, return_assistant_tokens_mask=True, return_dict=True)
    assert reference["input_ids"] == ids
    ours = [int(label != IGNORE_INDEX) for label in labels]
    differing = [tokenizer.decode([ids[k]]) for k in range(len(ids)) if ours[k] != reference["assistant_masks"][k]]
    assert differing == ["\n", "\n"]
    assert _learned_text(tokenizer, ids, labels) == "Yes, from 39 dollars.<|end|>\nRed and black.<|end|>\n"


def test_train_on_prompt_and_default_template(tokenizer):
    ids, labels = tokenize_messages(tokenizer, CONVERSATION, train_on_prompt=True)
    assert labels == ids
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    ids, labels = tokenize_messages(tokenizer, CONVERSATION, train_on_prompt=False)
    assert _learned_text(tokenizer, ids, labels) == "Yes, from 39 dollars.<|endoftext|>\nRed and black.<|endoftext|>\n"


def test_truncation_is_counted_and_prompt_only_rows_reported(tokenizer, caplog):
    long_answer = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "word " * 200}]}
    long_prompt = {"messages": [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]}
    text_row = {"text": "Plain text to continue."}
    examples, stats = tokenize_rows(tokenizer, [long_answer, long_prompt, text_row], 64, False, "train")
    assert stats.rows == 3 and stats.truncated == 2 and stats.dropped_no_target == 1 and stats.dropped_rows == [2]
    assert len(examples) == 2 and all(len(e["input_ids"]) <= 64 for e in examples)
    assert examples[1]["labels"] == examples[1]["input_ids"] and examples[1]["input_ids"][-1] == tokenizer.eos_token_id
    assert "truncated" in caplog.text and "rows 2" in caplog.text


def test_padding_free_rows_do_not_attend_to_each_other(tiny_model_dir):
    """Padding-free batches on CPU (sdpa): one flattened row with restarting position_ids gives the
    same logits as each example alone, so examples never see each other."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").eval()
    model.config.use_cache = False
    a, b = torch.arange(5, 17), torch.arange(40, 49)
    with torch.no_grad():
        alone = torch.cat([model(input_ids=a[None]).logits[0], model(input_ids=b[None]).logits[0]])
        flat = torch.cat([a, b])[None]
        positions = torch.cat([torch.arange(len(a)), torch.arange(len(b))])[None]
        packed = model(input_ids=flat, position_ids=positions, use_cache=False).logits[0]
        leaky = model(input_ids=flat, use_cache=False).logits[0]
    assert torch.allclose(alone, packed, atol=1e-5)
    assert not torch.allclose(alone[len(a):], leaky[len(a):], atol=1e-3)  # without the boundaries they would mix


def test_merge_parity_report_catches_a_wrong_merge():
    import torch

    from maap_finetune.training.merge import parity_report

    reference = [torch.tensor([[1.0, -4.0, 2.0]]), torch.tensor([[0.5, 3.0, -1.0]])]
    same = parity_report(reference, [r.clone() for r in reference], tolerance=0.01)
    assert same["passed"] and same["max_abs_logit_diff"] == 0.0 and same["examples"] == 2
    off = parity_report(reference, [reference[0], reference[1] + torch.tensor([[0.0, 0.2, 0.0]])], tolerance=0.01)
    assert not off["passed"] and abs(off["max_relative_logit_diff"] - 0.05) < 1e-6  # 0.2 / max |logit| 4


# Rows in the Azure OpenAI fine-tuning format: weights, and a tool call answered by a tool.
WEIGHTED = [
    {"role": "system", "content": "Marv answers with sarcasm."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris.", "weight": 0},
    {"role": "user", "content": "More sarcastic?"},
    {"role": "assistant", "content": "Paris, obviously.", "weight": 1},
    {"role": "user", "content": "And Italy?"},
    {"role": "assistant", "content": "Rome, of course."},
]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather now",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
TOOL_CHAT = [
    {"role": "user", "content": "Weather in Oslo?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "12 C, rain"},
    {"role": "assistant", "content": "12 degrees and rain in Oslo."},
]


def test_weight_zero_turns_are_context_and_every_weight_one_turn_is_learned(tokenizer):
    """Token by token: our mask is transformers' assistant mask (from the {% generation %} markers) minus
    the weight-0 turn, plus the newline after each learned <|end|>."""
    ids, labels = tokenize_messages(tokenizer, WEIGHTED, train_on_prompt=False)
    reference = tokenizer.apply_chat_template(WEIGHTED, return_assistant_tokens_mask=True, return_dict=True)
    assert reference["input_ids"] == ids
    def length(messages, generation_prompt=False) -> int:
        return len(tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, return_dict=True)["input_ids"])

    skipped_start, skipped_end = length(WEIGHTED[:2], True), length(WEIGHTED[:3])  # the weight-0 turn
    for k, (token, label) in enumerate(zip(ids, labels)):
        in_weight_zero_turn = skipped_start <= k < skipped_end
        expected = reference["assistant_masks"][k] and not in_weight_zero_turn
        if tokenizer.decode([token]) == "\n" and labels[k - 1] != IGNORE_INDEX:
            expected = True  # the newline after a learned <|end|> closes the turn too
        assert (label != IGNORE_INDEX) == bool(expected), (k, tokenizer.decode([token]))
        assert label in (IGNORE_INDEX, token)
    assert _learned_text(tokenizer, ids, labels) == "Paris, obviously.<|end|>\nRome, of course.<|end|>\n"
    assert "Paris.<|end|>" in _prompt_text(tokenizer, ids, labels)


def test_train_on_prompt_learns_everything_but_weight_zero_turns(tokenizer):
    ids, labels = tokenize_messages(tokenizer, WEIGHTED, train_on_prompt=True)
    reference = tokenizer.apply_chat_template(WEIGHTED, return_dict=True)["input_ids"]
    assert ids == reference
    assert _prompt_text(tokenizer, ids, labels) == "Paris.<|end|>\n"  # the weight-0 turn only
    plain = [{k: v for k, v in m.items() if k != "weight"} for m in WEIGHTED]
    ids, labels = tokenize_messages(tokenizer, plain, train_on_prompt=True)
    assert labels == ids  # no weights: every token


def test_tool_call_turns_are_learned_and_tool_results_are_not(tokenizer):
    ids, labels = tokenize_messages(tokenizer, TOOL_CHAT, train_on_prompt=False, tools=TOOLS)
    learned = _learned_text(tokenizer, ids, labels)
    assert learned == ('<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Oslo"}}]<|/tool_call|><|end|>\n'
                       "12 degrees and rain in Oslo.<|end|>\n")
    prompt = _prompt_text(tokenizer, ids, labels)
    assert '"name": "get_weather", "description": "Weather now"' in prompt  # the definitions are context
    assert "<|tool|>\n12 C, rain<|end|>" in prompt  # the tool's result is context
    examples, stats = tokenize_rows(tokenizer, [{"messages": TOOL_CHAT, "tools": TOOLS}], 512, False, "train")
    assert examples[0]["labels"] == labels and stats.target_tokens == sum(label != IGNORE_INDEX for label in labels)


def test_a_template_without_tools_support_stops_training_with_the_fix(tokenizer):
    from trl.chat_template_utils import phi3_chat_template

    from maap_finetune.common.errors import UserError
    from maap_finetune.data.chat_template import check_tools_support

    check_tools_support(tokenizer, "tiny-phi3", "train.jsonl")  # the tiny model's template renders tools
    tokenizer.chat_template = phi3_chat_template
    with pytest.raises(UserError) as info:
        check_tools_support(tokenizer, "microsoft/Phi-3-mini-4k-instruct", "train.jsonl line 1")
    message = str(info.value)
    assert "train.jsonl line 1 has function calling" in message
    assert "does not show the tool definitions (tools) in the prompt" in message
    assert "drops the assistant's tool calls (tool_calls)" in message
    assert "chat_template input" in message and "Phi-4-mini" in message
