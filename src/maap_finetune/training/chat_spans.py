"""Where each assistant turn lies in a rendered conversation: the character spans the loss mask comes from.

The exact method (`exact_spans`) renders, for each assistant turn i, the turns before it with the generation
prompt (the span starts where that render ends; it must be a prefix of the whole) and the turns up to i (the span
ends where that render stops agreeing with the whole). Those are prefixes of the conversation, so its cost grows
with the square of the turns.

Released chat templates are nearly all piecewise: the render of `messages[:k]` is the first message rendered
alone less a tail, then each later message's piece, then the tail (the generation prompt's text, or what the
template appends without it); a message's piece is that message rendered alone less its role's head (a BOS, a
default system prompt, a tools block) in front and the tail behind. Then no prefix needs a render: each one is the
whole render cut at a piece boundary plus a tail, and the piecewise method renders each message alone instead
(linear in the turns), computing the exact method's spans from those cuts.

Checked, not assumed. Once per (template, special tokens, tools), a probe renders every prefix of two synthetic
conversations and of the first real one, with and without the generation prompt, and learns the heads and tails
only if every one of those renders is exactly the piecewise form (there, both methods give the same spans). Per
row, the whole render must be the first message's and the pieces' concatenation plus the tail, and the generation
prompt must follow each boundary a turn starts at. A row that fails takes the exact method, and so does every row
when the probe fails (logged once at info), every row that renders fewer messages that way (one turn), and every
row of a batch whose rows of that template and tools would save fewer renders than a probe costs. What this
cannot rule out is a template that renders the prefixes of some unprobed row other than piecewise while its whole
render still checks out; only rendering the prefixes (the exact method) would.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from maap_finetune.common.errors import UserError

log = logging.getLogger(__name__)

_PREFIX_ERROR = (
    "the chat template renders a conversation differently from its own prefix (the turns before an "
    "assistant message plus the generation prompt), so assistant tokens cannot be located; "
    "use a prefix-preserving template, or set train_on_prompt true (and drop weight 0 from the rows: "
    "its turns must be located too)"
)

# Rows by the method that located their spans ("piecewise", "exact"): read by tests and benchmarks.
ROWS_BY_METHOD: Counter = Counter()


def _render_many(tokenizer, conversations: list[Sequence[dict]], add_generation_prompt: bool, tools) -> list[str]:
    """One batched `apply_chat_template` call: each conversation renders as it would alone."""
    if not conversations:
        return []
    return tokenizer.apply_chat_template(
        [list(c) for c in conversations], tools=tools or None, tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )


def _common_prefix(a: str, b: str) -> int:
    """Length of the longest common prefix, by bisection over C-speed `startswith` (no per-character loop)."""
    n = min(len(a), len(b))
    if b.startswith(a[:n] if n < len(a) else a):
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo] and a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if b.startswith(a[lo:mid], lo):
            lo = mid
        else:
            hi = mid
    return lo


def _turns(messages: Sequence[dict], weight: int) -> list[int]:
    return [i for i, m in enumerate(messages) if m.get("role") == "assistant" and m.get("weight", 1) == weight]


def _tools_key(tools) -> str | None:
    return json.dumps(tools, default=str) if tools else None


def exact_spans(tokenizer, conversations: Sequence[Sequence[dict]], tools, weight: int):
    """The rendered text and the spans of the turns of `weight`, from two prefix renders per turn.

    The span of turn i starts where "the turns before it plus the generation prompt" ends (that render must be a
    prefix of the whole conversation) and ends where "the conversation up to and including it" stops agreeing
    with the whole (the last turn owns everything the template appends: end-of-turn, EOS). Every render is one
    batched `apply_chat_template` call (two: with and without the generation prompt)."""
    plain, prompted, plans = [], [], []
    for messages in conversations:
        plan = [len(plain)]
        plain.append(messages)
        for i in _turns(messages, weight):
            prompt_at = cut_at = None
            if i:
                prompt_at = len(prompted)
                prompted.append(messages[:i])
            if i != len(messages) - 1:
                cut_at = len(plain)
                plain.append(messages[: i + 1])
            plan.append((prompt_at, cut_at))
        plans.append(plan)
    plain_text = _render_many(tokenizer, plain, False, tools)
    prompt_text = _render_many(tokenizer, prompted, True, tools)
    results = []
    for full_at, *turns in plans:
        full = plain_text[full_at]
        spans = []
        for prompt_at, cut_at in turns:
            prompt = "" if prompt_at is None else prompt_text[prompt_at]
            if not full.startswith(prompt):
                raise UserError(_PREFIX_ERROR)
            end = len(full) if cut_at is None else _common_prefix(plain_text[cut_at], full)
            spans.append((len(prompt), end))
        results.append((full, spans))
    return results


@dataclass(frozen=True)
class PiecewiseForm:
    """render(messages[:k]) == alone(m_0) less `tail` + piece(m_1) + ... + piece(m_{k-1}) + `tail` (`prompt_tail`
    with the generation prompt), where piece(m) is alone(m) less `heads[m's role]` in front and `tail` behind."""

    heads: dict[str, str]
    tail: str
    prompt_tail: str


def _tool_call(call_id: str, city: str) -> dict:
    return {"role": "assistant", "content": "", "tool_calls": [{"id": call_id, "type": "function", "function": {
        "name": "get_weather", "arguments": json.dumps({"city": city})}}]}


# Probe conversations: the plain alternation nearly every template accepts (required to fit), then tool calls and
# results (their roles' heads learned where they fit, else rows with tool results take the exact method).
_PROBE_CHAT = [
    {"role": "user", "content": "Which bikes do you sell?"},
    {"role": "assistant", "content": "Road and mountain bikes."},
    {"role": "user", "content": "In red?"},
    {"role": "assistant", "content": "Both, in red and black."},
    {"role": "user", "content": "Thanks!"},
    {"role": "assistant", "content": "You are welcome."},
]
_PROBE_TOOL_CHAT = [
    {"role": "user", "content": "Weather in Oslo?"},
    _tool_call("call_1", "Oslo"),
    {"role": "tool", "tool_call_id": "call_1", "content": "Rain, 8 C"},
    {"role": "assistant", "content": "Rain and 8 degrees."},
    {"role": "user", "content": "And Bergen?"},
    _tool_call("call_2", "Bergen"),
    {"role": "tool", "tool_call_id": "call_2", "content": "Sun, 12 C"},
    {"role": "assistant", "content": "Sunny and 12 degrees."},
]
_PROBE_REAL_MESSAGES = 8  # the first real conversation is probed up to this many messages (the probe is quadratic)


def _prefix_renders(n: int) -> int:
    """Messages rendered by the probe of an n-message conversation: each prefix twice, each message alone."""
    return n * (n + 1) + n


# A probe renders about 200 messages, as many as the exact method does for 6 rows of 4 turns: a (template, tools)
# is probed once a batch's rows of it would save more renders than that (so rows that each bring their own tools,
# with few turns, keep the exact method rather than pay a probe each).
_PROBE_COST = _prefix_renders(6) + _prefix_renders(8) + _prefix_renders(_PROBE_REAL_MESSAGES)

_FORMS: dict[tuple, PiecewiseForm | None] = {}  # (template, special tokens, tools) -> its form, None if not piecewise
_FORMS_KEPT = 1024
_TEMPLATES_LOGGED: set[str] = set()


def _probe_renders(tokenizer, messages: Sequence[dict], tools):
    """Every prefix rendered without and with the generation prompt, and every message alone; None if it raises."""
    prefixes = [messages[:k] for k in range(1, len(messages) + 1)]
    try:
        return (_render_many(tokenizer, prefixes, False, tools), _render_many(tokenizer, prefixes, True, tools),
                _render_many(tokenizer, [[m] for m in messages], False, tools))
    except Exception:  # noqa: BLE001 - a template that raises here takes the exact method, which raises if it must
        return None


def _fit(messages, renders, t: int, heads: dict[str, str], tails: list) -> bool:
    """Whether every prefix render of `messages` has the piecewise form with a tail of `t` characters; the heads
    and tails learned are added to `heads` and `tails` ([tail, prompt_tail], None until known)."""
    plain, prompted, alone = renders
    tail = plain[0][len(plain[0]) - t:]
    if tails[0] is not None and tail != tails[0]:
        return False
    learned, prompt_tail = {}, tails[1]
    for k, (text, with_prompt) in enumerate(zip(plain, prompted)):
        before = text[: len(text) - t]  # the render of messages[:k + 1] without its tail
        if not text.endswith(tail) or not with_prompt.startswith(before):
            return False
        if prompt_tail is None:
            prompt_tail = with_prompt[len(before):]
        if with_prompt[len(before):] != prompt_tail:
            return False
        if k + 1 < len(plain):
            after = plain[k + 1]  # must be `before` + the piece of message k + 1 + the tail
            if not after.startswith(before) or not after.endswith(tail) or len(after) - t < len(before):
                return False
            piece_and_tail = after[len(before):]
            lone = alone[k + 1]
            if len(lone) < len(piece_and_tail) or not lone.endswith(piece_and_tail):
                return False
            head, role = lone[: len(lone) - len(piece_and_tail)], messages[k + 1].get("role")
            if learned.setdefault(role, heads.get(role, head)) != head:
                return False
    heads.update(learned)
    tails[:] = [tail, prompt_tail]
    return True


def _learn_form(tokenizer, tools, real: Sequence[dict]) -> tuple[PiecewiseForm | None, str]:
    """The template's piecewise form, probed on the synthetic conversations and `real`; or None and why not."""
    required = [_PROBE_CHAT, list(real[:_PROBE_REAL_MESSAGES])]
    required_renders = [_probe_renders(tokenizer, messages, tools) for messages in required]
    if any(r is None for r in required_renders):
        return None, "it raises on a prefix or on a message alone"
    tool_renders = _probe_renders(tokenizer, _PROBE_TOOL_CHAT, tools)
    texts = [text for renders in required_renders for kind in (renders[0], renders[2]) for text in kind]
    last = texts[0][::-1]
    longest_tail = min(_common_prefix(last, text[::-1]) for text in texts)  # their common suffix
    for t in range(longest_tail + 1):  # the shortest tail that fits; a longer one that also fits is a rotation
        heads: dict[str, str] = {}
        tails: list = [None, None]
        if all(_fit(m, r, t, heads, tails) for m, r in zip(required, required_renders)):
            if tool_renders is not None:
                _fit(_PROBE_TOOL_CHAT, tool_renders, t, heads, tails)  # adds its roles' heads only where it fits
            return PiecewiseForm(heads=heads, tail=tails[0], prompt_tail=tails[1]), ""
    return None, "a prefix does not render as the first message, the pieces and a tail"


def _form_key(tokenizer, tools) -> tuple:
    return (repr(getattr(tokenizer, "chat_template", None)),
            repr(sorted(getattr(tokenizer, "special_tokens_map", {}).items())), _tools_key(tools))


def _form_of(tokenizer, key: tuple, tools, real: Sequence[dict]) -> PiecewiseForm | None:
    if key not in _FORMS:
        if len(_FORMS) >= _FORMS_KEPT:
            del _FORMS[next(iter(_FORMS))]  # the oldest
        _FORMS[key], why = _learn_form(tokenizer, tools, real)
        if _FORMS[key] is None and key[0] not in _TEMPLATES_LOGGED:
            _TEMPLATES_LOGGED.add(key[0])
            log.info("the chat template is not piecewise (%s): the loss mask of multi-turn rows takes the exact "
                     "method, two renders per assistant turn, so their tokenization grows with the turns squared", why)
    return _FORMS[key]


def _renders_saved(messages: Sequence[dict], turns: list[int]) -> int:
    """Messages the exact method renders (the whole, and its prefixes) less the piecewise method's (the whole, and
    each message alone): negative for one turn, quadratic in the turns beyond."""
    n = len(messages)
    return n + sum(i + (i + 1 if i < n - 1 else 0) for i in turns) - 2 * n


def _piecewise_row(form: PiecewiseForm, messages, full: str, alone: list[str], turns: list[int]):
    """The exact method's (text, spans) from the whole render and each message's render alone; None unless the
    whole render is the pieces' concatenation and the generation prompt follows every needed boundary."""
    tail, t = form.tail, len(form.tail)
    first = alone[0]
    if not full.endswith(tail) or not first.endswith(tail):
        return None
    end = len(first) - t
    if not full.startswith(first[:end]):
        return None
    ends = [end]  # ends[k]: where the render of messages[:k + 1] less its tail ends in `full`
    for message, lone in zip(messages[1:], alone[1:]):
        head = form.heads.get(message.get("role"))
        if head is None or len(lone) < len(head) + t or not lone.startswith(head) or not lone.endswith(tail):
            return None
        piece = lone[len(head): len(lone) - t]
        if not full.startswith(piece, end):
            return None
        end += len(piece)
        ends.append(end)
    if end + t != len(full):
        return None
    spans = []
    for i in turns:
        start = 0
        if i:
            if not full.startswith(form.prompt_tail, ends[i - 1]):
                return None  # the exact method refuses this row (or disagrees): it decides
            start = ends[i - 1] + len(form.prompt_tail)
        stop = len(full) if i == len(messages) - 1 else ends[i] + _common_prefix(tail, full[ends[i]: ends[i] + t])
        spans.append((start, stop))
    return full, spans


def _piecewise_spans(tokenizer, form: PiecewiseForm, conversations, tools, turns: list[list[int]]) -> list:
    """(text, spans) of each conversation by the piecewise method, None where its row check fails; one batched
    render of every whole conversation and every message alone."""
    alone = [[m] for messages in conversations for m in messages]
    try:
        texts = _render_many(tokenizer, list(conversations) + alone, False, tools)
    except Exception:  # noqa: BLE001 - the exact method renders these rows again and raises what it must
        return [None] * len(conversations)
    at = len(conversations)
    results = []
    for full, messages, row_turns in zip(texts, conversations, turns):
        results.append(_piecewise_row(form, messages, full, texts[at: at + len(messages)], row_turns))
        at += len(messages)
    return results


def spans_of_chats(tokenizer, chats: Sequence[tuple[Sequence[dict], list | None]], weight: int):
    """For each (messages, tools): the rendered text and the character spans of its assistant turns of `weight`,
    equal to `exact_spans`'; the piecewise method where the template allows it (see the module docstring)."""
    groups: dict[str | None, list[int]] = {}
    for index, (_, tools) in enumerate(chats):
        groups.setdefault(_tools_key(tools), []).append(index)
    results: list = [None] * len(chats)
    for members in groups.values():
        tools = chats[members[0]][1]
        if any(not chats[index][0] for index in members):
            raise UserError("a prepared row has an empty messages list")
        turns = {index: _turns(chats[index][0], weight) for index in members}
        saved = {index: _renders_saved(chats[index][0], turns[index]) for index in members}
        cheaper = [index for index in members if saved[index] > 0]
        key = _form_key(tokenizer, tools) if cheaper else None
        if cheaper and (key in _FORMS or sum(saved[index] for index in cheaper) > _PROBE_COST):
            form = _form_of(tokenizer, key, tools, chats[cheaper[0]][0])
            if form is not None:
                done = _piecewise_spans(tokenizer, form, [chats[i][0] for i in cheaper], tools,
                                        [turns[i] for i in cheaper])
                for index, result in zip(cheaper, done):
                    results[index] = result
                failed = done.count(None)
                if failed:
                    log.debug("%d of %d rows did not render as the template's pieces: the exact method locates "
                              "their turns", failed, len(cheaper))
        rest = [index for index in members if results[index] is None]
        for index, result in zip(rest, exact_spans(tokenizer, [chats[i][0] for i in rest], tools, weight)):
            results[index] = result
        ROWS_BY_METHOD["exact"] += len(rest)
        ROWS_BY_METHOD["piecewise"] += len(members) - len(rest)
    return results
