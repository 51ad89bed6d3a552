"""Each component's YAML and its entry script's parser agree (defaults live only in the YAML).

For every component (recursive glob): import its entry script, call build_parser(), and check that
the flags are exactly the YAML inputs + outputs, non-optional inputs and outputs are required, no
flag has a default other than None, boolean inputs take a True/False value; and in the YAML, every
optional input sits inside a $[[...]] block of the command and every other input outside.
A component whose entry script does not exist yet fails here, naming the missing file.
"""

from __future__ import annotations

import argparse

import pytest
import yaml

from pipelines.definition.command import split_command
from pipelines.definition.inputs import REPO_ROOT
from pipelines.definition.lint import check_parser_agreement, component_files, entry_script_path, import_entry_script
from tests import helpers

COMPONENTS = component_files()


def _entry_module(spec_path, spec):
    step = spec_path.parent.name
    script = entry_script_path(spec_path, spec)
    assert script is not None, f"{spec_path}: command does not start with `python <script>.py`"
    assert script.is_file(), f"{spec_path}: entry script {script} does not exist"
    if step in helpers.ENTRY_SCRIPTS and spec_path.parent == helpers.COMPONENTS_DIR / step:
        return helpers.load_entry(step)
    return import_entry_script(script)


@pytest.mark.parametrize("spec_path", COMPONENTS, ids=[p.parent.name for p in COMPONENTS])
def test_parser_matches_yaml(spec_path):
    spec = yaml.safe_load(spec_path.read_text())
    module = _entry_module(spec_path, spec)
    parser = module.build_parser()
    assert isinstance(parser, argparse.ArgumentParser)
    assert check_parser_agreement(spec, parser, where=str(spec_path.relative_to(REPO_ROOT))) == []
    for name in ("parse_args", "run", "main"):
        assert callable(getattr(module, name, None)), f"{spec_path.parent.name} entry script has no {name}()"


@pytest.mark.parametrize("spec_path", COMPONENTS, ids=[p.parent.name for p in COMPONENTS])
def test_optional_inputs_inside_blocks_and_the_rest_outside(spec_path):
    spec = yaml.safe_load(spec_path.read_text())
    outside, blocks = split_command(spec["command"])
    for name, inp in (spec.get("inputs") or {}).items():
        ref = "${{inputs.%s}}" % name
        if inp.get("optional"):
            assert ref not in outside and any(ref in block for block in blocks), f"optional {name} must be in $[[...]]"
        else:
            assert ref in outside and not any(ref in block for block in blocks), f"{name} must be outside $[[...]]"


# The checker itself, on a fake component and hand-made parsers: each rule can fail.

SPEC = {
    "inputs": {
        "data": {"type": "uri_folder"},
        "rate": {"type": "number", "default": 0.1},
        "flag": {"type": "boolean", "default": False},
        "extra": {"type": "string", "optional": True},
    },
    "outputs": {"out": {"type": "uri_folder"}},
}


def good_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--flag", type=str, required=True)
    parser.add_argument("--extra", default=None)
    parser.add_argument("--out", required=True)
    return parser


def test_a_matching_parser_passes():
    assert check_parser_agreement(SPEC, good_parser()) == []


def test_each_disagreement_is_reported():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data")  # not required
    parser.add_argument("--rate", type=float, default=0.2, required=True)  # a default of its own
    parser.add_argument("--flag", action="store_true")  # a switch for a boolean input
    parser.add_argument("--extra", required=True)  # optional input made required
    parser.add_argument("--bogus", required=True)  # not in the YAML
    parser.add_argument("-o", "--out", required=True)  # an alias
    problems = "\n".join(check_parser_agreement(SPEC, parser, where="fake.py"))
    for expected in (
        "--data must be required=True",
        "--rate has default 0.2",
        "--flag is a switch",
        "--extra is required, but the input is optional",
        "--bogus has no input or output of that name",
        "flag -o/--out: one --<input name> per flag",
    ):
        assert expected in problems, f"{expected!r} missing from:\n{problems}"


def test_a_missing_flag_is_reported():
    parser = good_parser()
    spec = {**SPEC, "inputs": {**SPEC["inputs"], "seed": {"type": "integer", "default": 1}}}
    assert check_parser_agreement(spec, parser) == ["component: seed is in the YAML but the parser has no --seed"]


def test_an_entry_script_is_imported_by_path_from_a_fake_component(tmp_path):
    folder = tmp_path / "components" / "fake"
    folder.mkdir(parents=True)
    (folder / "fake.py").write_text(
        "import argparse\n"
        "def build_parser():\n"
        "    p = argparse.ArgumentParser()\n"
        "    p.add_argument('--data', required=True)\n"
        "    p.add_argument('--out', required=True)\n"
        "    p.add_argument('--rate', type=float, default=0.5)\n"
        "    return p\n"
    )
    spec = {"command": "python fake.py --data ${{inputs.data}} --out ${{outputs.out}}", "code": ".",
            "inputs": {"data": {"type": "uri_folder"}}, "outputs": {"out": {"type": "uri_folder"}}}
    script = entry_script_path(folder / "spec.yaml", spec)
    assert script == (folder / "fake.py").resolve()
    problems = check_parser_agreement(spec, import_entry_script(script).build_parser())
    assert problems == ["component: --rate has no input or output of that name in the YAML"]
