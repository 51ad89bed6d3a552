"""The piecewise method (`training.chat_spans`) gives the exact method's texts and spans: on the equivalence test's
random conversations for five templates (tools on the tiny one) and for every template trl ships, by falling back
where a template or a row is not piecewise, and with a number of rendered messages linear in the turns where the
exact method's is quadratic."""

from __future__ import annotations

import logging
import random
from collections import Counter

import pytest

from maap_finetune.training import chat_spans
from maap_finetune.training.data import DEFAULT_CHAT_TEMPLATE
from tests.finetune.test_tokenize_equivalence import TOOLS, _conversation

CHATML = (  # with a default system prompt where the conversation has none, as Qwen's templates do
    "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}"
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3 = (  # Llama-3-Instruct's: BOS on the first message only, contents trimmed
    "{% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
_TURN = "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
NOT_PIECEWISE = {
    "counts the messages": "{% for message in messages %}" + _TURN + "{% endfor %}"
                           "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ messages | length }}"
                           "{% endif %}",
    "marks the last answer": "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] }}"
                             "{% if loop.last and message['role'] == 'assistant' %}{{ ' (last)' }}{% endif %}"
                             "{{ '<|end|>\n' }}{% endfor %}"
                             "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}",
    "numbers the questions": "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' }}"
                             "{% if message['role'] == 'user' %}{{ loop.index ~ '. ' }}{% endif %}"
                             "{{ message['content'] + '<|end|>\n' }}{% endfor %}"
                             "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}",
    "refuses a first assistant message": "{% if messages[0]['role'] == 'assistant' %}"
                                         "{{ raise_exception('Conversations start with a user message') }}{% endif %}"
                                         "{% for message in messages %}" + _TURN + "{% endfor %}"
                                         "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}",
}


@pytest.fixture
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture
def fresh(monkeypatch):
    """No template probed yet, rows counted from zero."""
    monkeypatch.setattr(chat_spans, "_FORMS", {})
    monkeypatch.setattr(chat_spans, "_TEMPLATES_LOGGED", set())
    monkeypatch.setattr(chat_spans, "ROWS_BY_METHOD", Counter())
    return chat_spans


@pytest.fixture
def every_row(monkeypatch):
    """The piecewise method tried on every row, one turn too (by default only where it renders fewer messages)."""
    monkeypatch.setattr(chat_spans, "_renders_saved", lambda messages, turns: 10**6)


def _template(name: str, tokenizer) -> str:
    from trl.chat_template_utils import phi3_chat_template

    return {"tiny": tokenizer.chat_template, "phi3": phi3_chat_template, "default": DEFAULT_CHAT_TEMPLATE,
            "chatml": CHATML, "llama3": LLAMA3}.get(name) or NOT_PIECEWISE[name]


def _chats(seed: str, n: int, with_tools: bool) -> list[tuple[list[dict], list | None]]:
    rng = random.Random(seed)
    rows = [_conversation(rng, with_tools) for _ in range(n)]
    return [(row["messages"], row.get("tools")) for row in rows]


def _exact(tokenizer, chats, weight):
    return [chat_spans.exact_spans(tokenizer, [messages], tools, weight)[0] for messages, tools in chats]


@pytest.mark.parametrize("template", ["tiny", "tiny+tools", "phi3", "default", "chatml", "llama3"])
@pytest.mark.parametrize("weight", [1, 0])
def test_the_piecewise_method_equals_the_exact_one(tokenizer, fresh, every_row, template, weight):
    tokenizer.chat_template = _template(template.removesuffix("+tools"), tokenizer)
    chats = _chats(f"{template}-{weight}", 200, with_tools=template.endswith("+tools"))
    assert chat_spans.spans_of_chats(tokenizer, chats, weight) == _exact(tokenizer, chats, weight)
    assert fresh.ROWS_BY_METHOD == {"piecewise": len(chats), "exact": 0}
    assert any(spans for _, spans in _exact(tokenizer, chats, weight))


@pytest.mark.parametrize("template", sorted(NOT_PIECEWISE))
def test_a_template_that_is_not_piecewise_takes_the_exact_method(tokenizer, fresh, every_row, caplog, template):
    tokenizer.chat_template = NOT_PIECEWISE[template]
    chats = [([{"role": "user", "content": f"Question {k}?"}, {"role": "assistant", "content": f"Answer {k}."}] * 3,
              tools) for k in range(5) for tools in (None, TOOLS)]
    with caplog.at_level(logging.INFO, logger=chat_spans.__name__):
        for _ in range(2):
            assert chat_spans.spans_of_chats(tokenizer, chats, 1) == _exact(tokenizer, chats, 1)
    assert fresh.ROWS_BY_METHOD == {"piecewise": 0, "exact": 2 * len(chats)}
    assert sum("is not piecewise" in r.message for r in caplog.records) == 1  # once for the template, not per tools


def test_a_row_that_does_not_render_as_its_pieces_takes_the_exact_method(tokenizer, fresh, every_row):
    # Piecewise on alternating turns, but a message repeating the role before it renders otherwise in context.
    tokenizer.chat_template = (
        "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' }}"
        "{% if loop.previtem is defined and loop.previtem['role'] == message['role'] %}{{ '(more) ' }}{% endif %}"
        "{{ message['content'] + '<|end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    )
    turn = [{"role": "user", "content": "Hello?"}, {"role": "assistant", "content": "Hi."}]
    twice = [{"role": "user", "content": "Hello?"}, {"role": "user", "content": "Anyone?"},
             {"role": "assistant", "content": "Yes."}]
    answered_twice = turn + [{"role": "assistant", "content": "Really."}] + turn[:1]  # only the row check sees it
    chats = [(turn * 3, None), (turn + twice + turn, None), (answered_twice, None), (turn * 4, None)]
    assert chat_spans.spans_of_chats(tokenizer, chats, 1) == _exact(tokenizer, chats, 1)
    assert fresh.ROWS_BY_METHOD == {"piecewise": 2, "exact": 2}


def test_the_prefix_refusal_is_the_exact_methods(tokenizer, fresh, every_row):
    from maap_finetune.common.errors import UserError

    tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] + ':' + m['content'] + '|' }}{% endfor %}"
                               "{% if add_generation_prompt %}{{ 'assistant says:' }}{% endif %}")
    row = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}] * 3
    with pytest.raises(UserError, match="prefix-preserving template"):
        chat_spans.spans_of_chats(tokenizer, [(row, None)], 1)


def _rendered_messages(monkeypatch) -> Counter:
    counted, render = Counter(), chat_spans._render_many

    def counting(tokenizer, conversations, add_generation_prompt, tools):
        counted["messages"] += sum(map(len, conversations))
        return render(tokenizer, conversations, add_generation_prompt, tools)

    monkeypatch.setattr(chat_spans, "_render_many", counting)
    return counted


@pytest.mark.parametrize("turns", [8, 32])
def test_the_messages_rendered_grow_linearly_with_the_turns(tokenizer, fresh, monkeypatch, turns):
    chat = [[{"role": "user", "content": f"Question {k}?"}, {"role": "assistant", "content": f"Answer {k}."}][i % 2]
            for k in range(turns) for i in range(2)]
    chat_spans.spans_of_chats(tokenizer, [(chat, None)] * 4, 1)  # the probe, once for the template
    counted = _rendered_messages(monkeypatch)
    piecewise = chat_spans.spans_of_chats(tokenizer, [(chat, None)], 1)
    assert counted["messages"] == 2 * len(chat)  # the whole conversation, and each message alone
    counted.clear()
    assert chat_spans.exact_spans(tokenizer, [chat], None, 1)[0] == piecewise[0]
    assert counted["messages"] == 2 * turns**2 + turns  # the whole, and two prefixes per turn (one for the first)


def test_rows_with_their_own_tools_and_few_turns_pay_no_probe(tokenizer, fresh):
    turn = [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": "Rain."}]
    chats = [(turn * 2, [{**TOOLS[0], "function": {**TOOLS[0]["function"], "name": f"tool_{k}"}}]) for k in range(20)]
    assert chat_spans.spans_of_chats(tokenizer, chats, 1) == _exact(tokenizer, chats, 1)
    assert fresh.ROWS_BY_METHOD == {"piecewise": 0, "exact": 20} and not fresh._FORMS


def _shipped_templates() -> list:
    from pathlib import Path

    import trl

    return sorted(Path(trl.__file__).parent.glob("chat_templates/*.jinja"))


def _outcome(compute):
    try:
        return compute()
    except Exception as error:  # noqa: BLE001 - a row both methods refuse must be refused by both, alike
        return type(error).__name__


@pytest.mark.parametrize("path", _shipped_templates(), ids=lambda path: path.stem)
def test_every_template_trl_ships_gives_the_exact_spans(tokenizer, fresh, every_row, path):
    tokenizer.chat_template = path.read_text(encoding="utf-8")
    rng = random.Random(path.stem)
    rows = [_conversation(rng, with_tools=k % 2 == 1) for k in range(24)]
    for row in rows:
        chat = [(row["messages"], row.get("tools"))]
        assert _outcome(lambda: chat_spans.spans_of_chats(tokenizer, chat, 1)) == _outcome(
            lambda: _exact(tokenizer, chat, 1))
    if path.stem in {"phi3", "qwen2_5", "llama3"}:  # piecewise, tools included: every row took the fast path
        assert fresh.ROWS_BY_METHOD == {"piecewise": len(rows), "exact": 0}
