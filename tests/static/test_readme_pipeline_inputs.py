"""The README's pipeline-inputs table is generated from the factory and the component YAMLs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_readme_pipeline_inputs_table_is_current():
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "generate_pipeline_inputs_table.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr


def test_table_lists_every_pipeline_input_with_its_yaml_default():
    sys.path.insert(0, str(REPO_ROOT))
    from pipelines.definition.inputs import PIPELINE_INPUTS, input_spec

    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    for name, targets in PIPELINE_INPUTS.items():
        row = next((line for line in readme.splitlines() if line.startswith(f"| `{name}` |")), None)
        assert row is not None, f"README lacks a row for pipeline input {name}"
        default = getattr(input_spec(*targets[0]), "default", None)
        if default is not None and not isinstance(default, bool):
            assert f"`{default}`" in row
