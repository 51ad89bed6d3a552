"""The one command grammar of Azure ML command components, as the local runner resolves it and lint checks it.

- `${{inputs.x}}` / `${{outputs.x}}`: replaced by the value or path as text, no quoting added;
- `$[[ ... ]]`: an optional block, kept when every input it references has a value, dropped otherwise;
- `${{parent.inputs.x}}` / `${{parent.jobs.<node>.outputs.<port>}}`: a node input bound to the pipeline's
  input or another node's output.
The component YAML quotes what needs it (`needs_quoting`: free text and paths, single-quoted).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from maap_finetune.common.errors import UserError

BLOCK = re.compile(r"\$\[\[(.*?)\]\]", re.DOTALL)
REFERENCE = re.compile(r"\$\{\{\s*(inputs|outputs)\.([A-Za-z0-9_]+)\s*\}\}")
PARENT_INPUT = re.compile(r"^\$\{\{\s*parent\.inputs\.([A-Za-z0-9_]+)\s*\}\}$")
NODE_OUTPUT = re.compile(r"^\$\{\{\s*parent\.jobs\.([A-Za-z0-9_]+)\.outputs\.([A-Za-z0-9_]+)\s*\}\}$")


def split_command(command: str) -> tuple[str, list[str]]:
    """The command without its `$[[...]]` blocks, and the blocks' contents."""
    blocks = BLOCK.findall(command)
    return BLOCK.sub(" ", command), blocks


def format_value(value: Any) -> str:
    """Render a value as Azure ML puts it on the command line (booleans as True/False)."""
    from azure.ai.ml import Input

    if isinstance(value, Input):
        return str(value.path)
    if isinstance(value, bool):
        return "True" if value else "False"
    return str(value)


def render_command(command: str, inputs: Mapping[str, str | None], outputs: Mapping[str, str], step: str = "step") -> str:
    """Resolve `$[[...]]` blocks and `${{...}}` references as text, as Azure ML does; return the command line.

    A block is kept when every input it references has a value, dropped otherwise (Azure ML's rule
    for optional inputs). An input outside any block without a value is an error. Values are pasted in
    verbatim: quoting is the component YAML's job, and the result runs in `bash -c` exactly as Azure ML
    runs it, so a quoting bug breaks here the way it breaks in a workspace.
    """

    def block(match: re.Match) -> str:
        refs = REFERENCE.findall(match.group(1))
        provided = all(inputs.get(name) is not None for kind, name in refs if kind == "inputs")
        return match.group(1) if provided else " "

    def reference(match: re.Match) -> str:
        kind, name = match.groups()
        table = inputs if kind == "inputs" else outputs
        if name not in table:
            raise UserError(f"step {step!r}: command refers to ${{{{{kind}.{name}}}}}, which the component does not declare")
        value = table[name]
        if value is None:
            raise UserError(f"step {step!r}: input {name!r} has no value and is outside a $[[...]] block")
        return value

    return REFERENCE.sub(reference, BLOCK.sub(block, command))


def needs_quoting(port_spec: dict) -> bool:
    """Everything but numbers, booleans and enums: free text and paths can hold spaces and shell syntax."""
    kind = port_spec.get("type")
    return not (kind in ("integer", "number", "boolean") or (kind == "string" and port_spec.get("enum")))


def unquoted_references(command: str) -> list[tuple[str, str]]:
    """The `${{inputs|outputs.x}}` references that a shell would not see inside single quotes."""
    found = []
    quote = None  # the quote character we are inside, as bash reads the line
    index = 0
    while index < len(command):
        char = command[index]
        match = REFERENCE.match(command, index) if command.startswith("${{", index) else None
        if match:
            if quote != "'":
                found.append(match.groups())
            index = match.end()
            continue
        if char == "\\" and quote != "'":
            index += 2
            continue
        if char in "'\"" and quote in (None, char):
            quote = None if quote == char else char
        index += 1
    return found
