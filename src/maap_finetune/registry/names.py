"""The names Azure ML takes for a registered model and a registry, checked before anything runs
(Register and Export ONNX both register models)."""

from __future__ import annotations

import re

MAX_MODEL_NAME = 255
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_REGISTRY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{2,32}$")


def registration_name_problems(registered_model_name: str, registry_name: str | None, suffix: str = "") -> list[str]:
    """One message per bad name; `suffix` is what the step appends to the model name (Export ONNX: -onnx)."""
    problems = []
    limit = MAX_MODEL_NAME - len(suffix)
    if not _MODEL_NAME.match(registered_model_name) or len(registered_model_name) > limit:
        problems.append(f"--registered_model_name {registered_model_name!r}: use letters, digits, '-', '_' and '.', "
                        f"starting with a letter or digit, at most {limit} characters"
                        + (f" ({suffix} is appended)" if suffix else ""))
    if registry_name is not None and not _REGISTRY_NAME.match(registry_name):
        problems.append(f"--registry_name {registry_name!r}: 3-33 letters, digits, '-' or '_'")
    return problems
