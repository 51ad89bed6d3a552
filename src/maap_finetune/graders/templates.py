"""`{{ item.x.y }}` and `{{ sample.output_text }}` templates, as Azure OpenAI's RFT graders write them.

A template names a namespace and a JSON-path-like variable: `item` is the data row (nested fields with
`a.b`, list elements with `a.0` or `a[0]`), `sample` the model's completion (`output_text`, and
`output_json`, optionally with a path into it). A string holding one is rendered with each `{{ }}`
replaced by the value's text: strings as they are, anything else as JSON.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PLACEHOLDER = re.compile(r"\{\{\s*(.*?)\s*\}\}")
SAMPLE_FIELDS = ("output_text", "output_json")
_MISSING = object()


class TemplateError(ValueError):
    """A placeholder that names no namespace or field we can fill (raised at load)."""


@dataclass(frozen=True)
class Reference:
    namespace: str  # item | sample
    path: tuple[str, ...]

    @property
    def text(self) -> str:
        return ".".join((self.namespace, *self.path))


def parse_reference(expression: str) -> Reference:
    parts = [p for p in re.split(r"\.|\[(\d+)\]", expression) if p]
    if not parts or any(not re.fullmatch(r"[^\s{}]+", p) for p in parts):
        raise TemplateError(f"{{{{{expression}}}}} is not namespace.field")
    namespace, path = parts[0], tuple(parts[1:])
    if namespace not in ("item", "sample"):
        raise TemplateError(f"{{{{{expression}}}}} names namespace {namespace!r}; the only namespaces are "
                            "item (the data row) and sample (the completion)")
    if not path:
        raise TemplateError(f"{{{{{expression}}}}} names no field; write {namespace}.<field>")
    if namespace == "sample" and path[0] not in SAMPLE_FIELDS:
        raise TemplateError(f"{{{{{expression}}}}}: sample has {' and '.join(SAMPLE_FIELDS)}, not {path[0]!r}")
    if namespace == "sample" and path[0] == "output_text" and len(path) > 1:
        raise TemplateError(f"{{{{{expression}}}}}: sample.output_text is text and has no fields")
    return Reference(namespace, path)


def references(text: str) -> list[Reference]:
    """Every placeholder of `text`, parsed (TemplateError on the first bad one)."""
    return [parse_reference(m.group(1)) for m in PLACEHOLDER.finditer(text)]


def lookup(value: Any, path: tuple[str, ...]) -> Any:
    """`value` followed down `path`; _MISSING where a step does not exist."""
    for step in path:
        if isinstance(value, Mapping) and step in value:
            value = value[step]
        elif isinstance(value, list) and step.isdigit() and int(step) < len(value):
            value = value[int(step)]
        else:
            return _MISSING
    return value


def missing(row: Mapping[str, Any], path: tuple[str, ...]) -> bool:
    return lookup(row, path) is _MISSING


def as_text(value: Any) -> str:
    if value is _MISSING or value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def render(text: str, item: Mapping[str, Any], sample: Mapping[str, Any]) -> str:
    """`text` with every placeholder filled. A missing item field is a KeyError (row_problems reports those
    before grading); a missing sample field renders empty, since the model wrote no such thing."""

    def fill(match: re.Match) -> str:
        ref = parse_reference(match.group(1))
        if ref.namespace == "item":
            value = lookup(item, ref.path)
            if value is _MISSING:
                raise KeyError(ref.text)
            return as_text(value)
        return as_text(lookup(sample, ref.path))

    return PLACEHOLDER.sub(fill, text)
