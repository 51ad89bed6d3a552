"""Write the README's pipeline-inputs table from pipelines/definition/inputs.py and the component YAMLs.

    python tools/generate_pipeline_inputs_table.py          # rewrite the block in README.md
    python tools/generate_pipeline_inputs_table.py --check  # exit 1 when README.md is stale

Each pipeline input takes its type, default, bounds and description from the first component input
it feeds (`PIPELINE_INPUTS`), so the table cannot drift from the YAMLs; a test runs `--check`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
START, END = "<!-- pipeline-inputs:start -->", "<!-- pipeline-inputs:end -->"

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def _cell(text) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _default(spec) -> str:
    value = getattr(spec, "default", None)
    if value is None:
        return "optional" if getattr(spec, "optional", False) else "required"
    if isinstance(value, bool):
        value = str(value).lower()
    return f"`{value}`"


def _allowed(spec) -> str:
    parts = []
    if getattr(spec, "enum", None):
        parts.append(", ".join(f"`{v}`" for v in spec.enum))
    low, high = getattr(spec, "min", None), getattr(spec, "max", None)
    if low is not None and high is not None:
        parts.append(f"{low} to {high}")
    elif low is not None:
        parts.append(f"≥ {low}")
    elif high is not None:
        parts.append(f"≤ {high}")
    return "; ".join(parts)


def render_table() -> str:
    from pipelines.definition.inputs import PIPELINE_INPUTS, input_spec

    lines = [
        "| input | type | default | allowed | feeds | description |",
        "|---|---|---|---|---|---|",
    ]
    for name, targets in PIPELINE_INPUTS.items():
        spec = input_spec(*targets[0])
        feeds = ", ".join(step for step, _ in targets)
        lines.append(
            f"| `{name}` | {spec.type} | {_default(spec)} | {_allowed(spec)} | {feeds} | {_cell(spec.description)} |"
        )
    lines.append("")
    lines.append(
        "Any other component input is set on its step alone: `--set finetune.gradient_checkpointing=true`, "
        "`--set data_prep.source_lang=de` (see each `components/<step>/README.md`)."
    )
    return "\n".join(lines)


def updated_readme(text: str) -> str:
    if START not in text or END not in text:
        raise SystemExit(f"{README}: the markers {START} and {END} are missing")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{render_table()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when README.md is stale")
    args = parser.parse_args(argv)
    current = README.read_text(encoding="utf-8")
    wanted = updated_readme(current)
    if args.check:
        if current != wanted:
            print(f"{README} is stale: run python tools/generate_pipeline_inputs_table.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
