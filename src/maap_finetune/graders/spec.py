"""Reading a graders file: Azure OpenAI's RFT grader JSON, checked field by field before anything runs.

One grader object (or {"grader": {...}}, the `reinforcement` method's shape) of type string_check,
text_similarity, python, score_model or multi; a multi's `graders` maps names to graders of the other
types, which its `calculate_output` combines. Every problem is collected and reported with the file and
the grader's name: an unknown type or field, a template naming a field that cannot exist, a python
grader whose source does not compile, a formula naming an unknown grader, a score_model with no endpoint.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maap_finetune.graders import score_model, text
from maap_finetune.graders.formula import Formula, FormulaError
from maap_finetune.graders.templates import Reference, TemplateError, references

TYPES = ("string_check", "text_similarity", "python", "score_model", "multi")
COMMON = {"type", "name"}
FIELDS = {
    "string_check": ({"input", "reference", "operation"}, set()),
    "text_similarity": ({"input", "reference", "evaluation_metric"}, {"pass_threshold"}),
    "python": ({"source"}, {"image_tag", "pass_threshold"}),
    "score_model": ({"input", "model"}, {"range", "sampling_params", "pass_threshold", "endpoint"}),
    "multi": ({"graders", "calculate_output"}, set()),
}
ROLES = ("system", "developer", "user", "assistant")


@dataclass
class GraderSpec:
    """One checked grader: `key` is its name in scores (a multi's key for its sub-graders)."""

    key: str
    type: str
    spec: dict[str, Any]
    refs: list[Reference] = field(default_factory=list)
    children: dict[str, GraderSpec] = field(default_factory=dict)
    formula: Formula | None = None


def read_graders_file(path: Path) -> dict[str, Any]:
    from maap_finetune.common.errors import UserError

    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"graders file {path} does not exist") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{err.lineno}:{err.colno}: not valid JSON ({err.msg}); a graders file holds "
                        "one Azure OpenAI grader object") from None
    if isinstance(raw, dict) and set(raw) == {"grader"}:
        raw = raw["grader"]
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected one grader object ({{\"type\": ..., \"name\": ...}}), "
                        f"got {type(raw).__name__}")
    return raw


def check_grader(raw: Any, key: str | None, where: str, problems: list[str], nested: bool = False) -> GraderSpec | None:
    """`raw` checked; each problem appended as '<where>: ...'; None when it cannot be used."""
    if not isinstance(raw, dict):
        problems.append(f"{where}: a grader is a JSON object, got {type(raw).__name__}")
        return None
    kind, name = raw.get("type"), raw.get("name")
    label = f"{where} grader {(key or name)!r}"
    if not isinstance(name, str) or not name.strip():
        problems.append(f"{label}: needs a 'name' (a non-empty string)")
        return None
    if kind == "label_model":
        problems.append(f"{label}: type 'label_model' is an evals grader, not one RFT trains with; "
                        f"use one of {', '.join(TYPES)}")
        return None
    if kind not in TYPES:
        problems.append(f"{label}: unknown type {kind!r}; use one of {', '.join(TYPES)}")
        return None
    if nested and kind == "multi":
        problems.append(f"{label}: a multi grader's graders cannot be multi graders; list them in one multi")
        return None
    required, optional = FIELDS[kind]
    missing = sorted(required - set(raw))
    unknown = sorted(set(raw) - required - optional - COMMON)
    if missing:
        problems.append(f"{label}: {kind} needs {', '.join(missing)}")
    if unknown:
        problems.append(f"{label}: unknown field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} for a "
                        f"{kind} grader (known: {', '.join(sorted(required | optional | COMMON))})")
    if missing:
        return None
    grader = GraderSpec(key=key or name, type=kind, spec=raw)
    before = len(problems)
    CHECKS[kind](grader, label, problems)
    return grader if len(problems) == before and not unknown else None


def _templates(grader: GraderSpec, label: str, problems: list[str], *names: str) -> None:
    for name in names:
        value = grader.spec[name]
        if not isinstance(value, str):
            problems.append(f"{label}: {name} must be a string (a template), got {type(value).__name__}")
            continue
        try:
            grader.refs += references(value)
        except TemplateError as err:
            problems.append(f"{label}: {name}: {err}")


def _string_check(grader: GraderSpec, label: str, problems: list[str]) -> None:
    _templates(grader, label, problems, "input", "reference")
    if grader.spec["operation"] not in text.STRING_OPERATIONS:
        problems.append(f"{label}: operation {grader.spec['operation']!r} is not one of "
                        f"{', '.join(text.STRING_OPERATIONS)}")


def _text_similarity(grader: GraderSpec, label: str, problems: list[str]) -> None:
    _templates(grader, label, problems, "input", "reference")
    problem = text.metric_problem(grader.spec["evaluation_metric"])
    if problem:
        problems.append(f"{label}: {problem}")


def _python(grader: GraderSpec, label: str, problems: list[str]) -> None:
    source = grader.spec["source"]
    if not isinstance(source, str):
        problems.append(f"{label}: source must be the grader's Python code as a string")
        return
    try:
        tree = ast.parse(source)
    except SyntaxError as err:
        problems.append(f"{label}: source line {err.lineno}: {err.msg} ({(err.text or '').strip()!r})")
        return
    grade = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "grade"]
    if not grade:
        problems.append(f"{label}: source defines no top-level function grade(sample, item) -> float")
    elif len(grade[-1].args.args) + len(grade[-1].args.posonlyargs) < 2 and not grade[-1].args.vararg:
        problems.append(f"{label}: grade() must take two arguments (sample, item)")


def _score_model(grader: GraderSpec, label: str, problems: list[str]) -> None:
    spec = grader.spec
    messages = spec["input"]
    if not isinstance(messages, list) or not messages:
        problems.append(f"{label}: input must be a list of messages ({{\"role\", \"content\"}})")
    else:
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in ROLES \
                    or not isinstance(message.get("content"), str):
                problems.append(f"{label}: input[{i}] must be {{\"role\": one of {', '.join(ROLES)}, "
                                "\"content\": a string}")
                continue
            try:
                grader.refs += references(message["content"])
            except TemplateError as err:
                problems.append(f"{label}: input[{i}].content: {err}")
    if not isinstance(spec["model"], str) or not spec["model"].strip():
        problems.append(f"{label}: model must name the Azure OpenAI deployment that grades")
    low_high = spec.get("range", [0, 1])
    if not (isinstance(low_high, list) and len(low_high) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in low_high)
            and low_high[0] < low_high[1]):
        problems.append(f"{label}: range must be [low, high] with low < high, got {low_high!r}")
    params = spec.get("sampling_params") or {}
    unknown = sorted(set(params) - set(score_model.SAMPLING_PARAMS)) if isinstance(params, dict) else ["(not an object)"]
    if unknown:
        problems.append(f"{label}: sampling_params {', '.join(unknown)} unknown (known: "
                        f"{', '.join(score_model.SAMPLING_PARAMS)})")
    if not score_model.endpoint_of(spec):
        problems.append(f"{label}: no Azure OpenAI endpoint: set {score_model.ENDPOINT_ENV} or the grader's "
                        "'endpoint' (https://<resource>.openai.azure.com); score_model graders call a real deployment")


def _multi(grader: GraderSpec, label: str, problems: list[str]) -> None:
    children = grader.spec["graders"]
    if not isinstance(children, dict) or not children:
        problems.append(f"{label}: graders must map names to graders ({{\"name\": {{\"type\": ...}}}})")
        return
    for key, child in children.items():
        if not key.isidentifier():
            problems.append(f"{label}: grader key {key!r} must be a name a formula can use (letters, digits, _)")
            continue
        if key == grader.key:
            problems.append(f"{label}: a sub-grader is named like the multi grader itself ({key!r}); rename one")
            continue
        checked = check_grader(child, key, f"{label} >", problems, nested=True)
        if checked:
            grader.children[key] = checked
            grader.refs += checked.refs
    formula = grader.spec["calculate_output"]
    if not isinstance(formula, str):
        problems.append(f"{label}: calculate_output must be a formula string, e.g. \"0.5 * a + 0.5 * b\"")
        return
    try:
        grader.formula = Formula(formula, children if isinstance(children, Mapping) else ())
    except FormulaError as err:
        problems.append(f"{label}: {err}")


CHECKS = {"string_check": _string_check, "text_similarity": _text_similarity, "python": _python,
          "score_model": _score_model, "multi": _multi}
