"""Every component YAML in the repo (recursive glob) loads, validates offline and follows the house rules."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pipelines.definition.inputs import REPO_ROOT
from pipelines.definition.lint import component_files, lint_component

COMPONENTS = component_files()


def test_the_glob_finds_the_pipeline_steps():
    found = {path.parent.name for path in COMPONENTS}
    assert {"data_prep", "finetune", "evaluate", "register"} <= found


@pytest.mark.parametrize("path", COMPONENTS, ids=[str(p.relative_to(REPO_ROOT)) for p in COMPONENTS])
def test_component_is_valid(path: Path):
    """Loads with azure.ai.ml and validates; $schema, snake_case name, Title Case display_name, semver
    version, descriptions everywhere, environment under environments/, code and additional_includes
    exist, optional inputs only inside $[[...]] and the others outside."""
    assert lint_component(path) == []


GOOD = """\
$schema: https://azuremlschemas.azureedge.net/latest/commandComponent.schema.json
type: command
name: good_step
display_name: Good Step
version: 1.0.0
description: Does a thing.
code: .
additional_includes:
  - ../../lib
environment: file:../../environments/cpu/environment.yaml
inputs:
  data:
    type: uri_folder
    description: The data.
  rate:
    type: number
    default: 0.1
    description: A rate.
  extra:
    type: string
    optional: true
    description: Optional.
outputs:
  out:
    type: uri_folder
    description: The result.
command: >-
  python good.py --data '${{inputs.data}}' --rate ${{inputs.rate}} $[[--extra '${{inputs.extra}}']] --out '${{outputs.out}}'
"""


def write_component(root: Path, text: str, name: str = "good") -> Path:
    (root / "lib").mkdir(exist_ok=True)
    env = root / "environments" / "cpu"
    env.mkdir(parents=True, exist_ok=True)
    (env / "environment.yaml").write_text("name: cpu\nimage: mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest\n")
    folder = root / "components" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.yaml").write_text(textwrap.dedent(text))
    return folder / "spec.yaml"


def test_a_conforming_fake_component_passes(tmp_path):
    assert lint_component(write_component(tmp_path, GOOD), root=tmp_path) == []


def test_every_rule_can_fail_and_names_file_line_and_field(tmp_path):
    bad = (
        GOOD.replace("$schema: https://azuremlschemas.azureedge.net/latest/commandComponent.schema.json\n", "")
        .replace("name: good_step", "name: Good-Step")
        .replace("display_name: Good Step", "display_name: good step")
        .replace("version: 1.0.0", "version: '1.0'")
        .replace("    description: A rate.\n", "")
        .replace("  - ../../lib", "  - ../../missing_lib")
        .replace("file:../../environments/cpu/environment.yaml", "file:../../elsewhere/environment.yaml")
        .replace("$[[--extra '${{inputs.extra}}']]", "--extra '${{inputs.extra}}' $[[--rate ${{inputs.rate}}]]")
    )
    problems = "\n".join(lint_component(write_component(tmp_path, bad), root=tmp_path))
    for expected in (
        "$schema: must be",
        "spec.yaml:2: name: must be snake_case",
        "display_name: use Title Case",
        "version: must be a quoted semver",
        "inputs.rate: missing description",
        "additional_includes: ../../missing_lib does not exist",
        "environment: file:../../elsewhere/environment.yaml does not exist",
        "inputs.extra: optional, so it must appear only inside a $[[...]] block",
        "inputs.rate: not optional, so it must not be inside a $[[...]] block",
    ):
        assert expected in problems, f"{expected!r} not reported in:\n{problems}"


def test_unused_and_undeclared_references_and_sdk_errors(tmp_path):
    bad = GOOD.replace("--rate ${{inputs.rate}}", "--rat ${{inputs.rat}}").replace("type: number", "type: nmber")
    problems = "\n".join(lint_component(write_component(tmp_path, bad), root=tmp_path))
    assert "refers to ${{inputs.rat}}, which is not declared" in problems
    assert "inputs.rate: not used in the command" in problems
    assert "Azure ML cannot load the component: inputs.rate: " in problems and "nmber" in problems


def test_environment_must_live_under_environments(tmp_path):
    elsewhere = tmp_path / "other" / "env"
    elsewhere.mkdir(parents=True)
    (elsewhere / "environment.yaml").write_text("name: x\nimage: x\n")
    bad = GOOD.replace("file:../../environments/cpu/environment.yaml", "file:../../other/env/environment.yaml")
    problems = lint_component(write_component(tmp_path, bad), root=tmp_path)
    assert any("is not an environment defined under environments/<name>/" in p for p in problems), problems
    pinned = GOOD.replace("file:../../environments/cpu/environment.yaml", "azureml:some-env@latest")
    problems = lint_component(write_component(tmp_path, pinned, name="pinned"), root=tmp_path)
    assert any("environment: must be file:" in p for p in problems), problems


def test_validate_repo_lists_every_problem_of_every_component(tmp_path):
    """What `submit.py --validate` runs: all problems at once, not the first one."""
    from pipelines.definition.lint import lint_repo

    write_component(tmp_path, GOOD.replace("    description: The data.\n", ""), name="first")
    write_component(tmp_path, GOOD.replace("version: 1.0.0", "version: 1"), name="second")
    problems = lint_repo(root=tmp_path)
    text = "\n".join(problems)
    assert "first/spec.yaml:12: inputs.data: missing description" in text
    assert "second/spec.yaml:5: version: must be a quoted semver" in text
    assert text.count("good.py does not exist") == 2  # the entry scripts were never written


@pytest.mark.parametrize(
    "quoted, bare, expected",
    [
        ("'${{inputs.extra}}'", "${{inputs.extra}}", "inputs.extra: free text, so it must be single-quoted"),
        # inside double quotes the shell still expands $, ` and \\ in a value
        ("'${{inputs.extra}}'", '"${{inputs.extra}}"', "inputs.extra: free text, so it must be single-quoted"),
        ("'${{inputs.extra}}'", "'x' ${{inputs.extra}} 'y'", "inputs.extra: free text, so it must be single-quoted"),
        ("'${{inputs.data}}'", "${{inputs.data}}", "inputs.data: a path, so it must be single-quoted"),
        ("'${{outputs.out}}'", "${{outputs.out}}", "outputs.out: a path, so it must be single-quoted"),
    ],
)
def test_free_text_and_paths_must_be_single_quoted(tmp_path, quoted, bare, expected):
    """Azure ML pastes values into the command as text and runs it in a shell: an unquoted free-text input
    splits on spaces and breaks on `(`. Enums, numbers and booleans may stay bare."""
    assert GOOD.count(quoted) == 1
    problems = "\n".join(lint_component(write_component(tmp_path, GOOD.replace(quoted, bare)), root=tmp_path))
    assert expected in problems, problems
    assert "inputs.rate" not in problems  # a number stays bare


def test_every_shipped_command_quotes_its_free_text_and_paths():
    from pipelines.definition.command import needs_quoting, unquoted_references
    import yaml

    for path in COMPONENTS:
        spec = yaml.safe_load(path.read_text())
        bare = [
            f"{kind}.{port}"
            for kind, port in unquoted_references(spec["command"])
            if needs_quoting(spec[kind][port])
        ]
        assert bare == [], f"{path}: {bare}"
