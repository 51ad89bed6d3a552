"""Offline checks of every component YAML, its entry script's parser, and the pipeline.

`python pipelines/submit.py --validate` runs `lint_repo()` and lists every problem it finds;
the static tests run the same checks one component at a time. Nothing here touches the network.

Checks per component (`lint_component`):
- the YAML loads and passes `azure.ai.ml.load_component(path)._validate()`;
- `$schema`, a snake_case `name`, a Title Case `display_name`, a semver string `version`, a
  `description`, and a `description` on every input and output;
- the environment is a `file:` reference to an environment YAML under `environments/<name>/`;
- `code` and every `additional_includes` entry exist;
- the command uses every input and output, refers to none that is undeclared, puts every optional
  input inside a `$[[...]]` block and every other input outside one.
Checks of the entry script (`check_parser_agreement`): its `build_parser()` has exactly one flag per
input and output, named the same; non-optional inputs and outputs are required; no flag has a
default other than None; boolean inputs take a value (True/False), as Azure ML passes them.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from pipelines.definition.command import REFERENCE, needs_quoting, split_command, unquoted_references
from pipelines.definition.inputs import REPO_ROOT

COMPONENT_SCHEMA = "https://azuremlschemas.azureedge.net/latest/commandComponent.schema.json"
SNAKE_CASE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$")
ENTRY_SCRIPT = re.compile(r"^\s*python3?\s+(?:-u\s+)?([\w./-]+\.py)\b")


def component_files(root: Path = REPO_ROOT) -> list[Path]:
    """Every component YAML under components/, found by recursive glob."""
    return sorted((root / "components").glob("**/spec.yaml"))


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def _key_lines(path: Path) -> dict[tuple[str, ...], int]:
    """1-based line of every mapping key, by its path of keys (for messages that name a line)."""
    import yaml

    lines: dict[tuple[str, ...], int] = {}

    def walk(node, prefix: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                keys = prefix + (str(key.value),)
                lines[keys] = key.start_mark.line + 1
                walk(value, keys)

    try:
        walk(yaml.compose(path.read_text(encoding="utf-8")), ())
    except yaml.YAMLError:
        pass
    return lines



def entry_script_path(spec_path: Path, spec: dict) -> Path | None:
    """The script the command runs (`python <script>.py ...`), relative to the component's code folder."""
    match = ENTRY_SCRIPT.match(str(spec.get("command") or ""))
    if not match:
        return None
    return (spec_path.parent / str(spec.get("code") or ".") / match.group(1)).resolve()


def lint_component(path: Path, root: Path = REPO_ROOT) -> list[str]:
    """Every problem with one component YAML, each prefixed with `file:line: field`.

    `root` is the repository whose `environments/` folder holds the environments.
    """
    import yaml

    where = _display(path)
    lines = _key_lines(path)

    def at(*keys: str) -> str:
        line = lines.get(tuple(keys)) or lines.get(tuple(keys[:1]))
        field_name = ".".join(keys)
        return f"{where}:{line}: {field_name}" if line else f"{where}: {field_name}"

    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        return [f"{where}: not valid YAML: {err}"]
    if not isinstance(spec, dict):
        return [f"{where}: expected a mapping at the top level"]

    problems: list[str] = []
    if spec.get("$schema") != COMPONENT_SCHEMA:
        problems.append(f"{at('$schema')}: must be {COMPONENT_SCHEMA}")
    name = spec.get("name")
    if not isinstance(name, str) or not SNAKE_CASE.match(name):
        problems.append(f"{at('name')}: must be snake_case (lowercase letters, digits, underscores); got {name!r}")
    display_name = spec.get("display_name")
    if not isinstance(display_name, str) or not display_name.strip():
        problems.append(f"{at('display_name')}: missing")
    elif any(word[:1].islower() for word in re.split(r"[\s-]+", display_name)):
        problems.append(f"{at('display_name')}: use Title Case; got {display_name!r}")
    version = spec.get("version")
    if not isinstance(version, str) or not SEMVER.match(version):
        problems.append(f"{at('version')}: must be a quoted semver string such as \"1.2.3\"; got {version!r}")
    if not str(spec.get("description") or "").strip():
        problems.append(f"{at('description')}: missing")

    inputs = spec.get("inputs") or {}
    outputs = spec.get("outputs") or {}
    for kind, ports in (("inputs", inputs), ("outputs", outputs)):
        for port, port_spec in ports.items():
            if not SNAKE_CASE.match(str(port)):
                problems.append(f"{at(kind, port)}: name must be snake_case")
            if not isinstance(port_spec, dict) or not str(port_spec.get("description") or "").strip():
                problems.append(f"{at(kind, port)}: missing description")

    problems += _lint_environment(path, spec, at, root)
    problems += _lint_code_and_includes(path, spec, at)
    problems += _lint_command(spec, at)
    problems += _sdk_problems(path, where)
    return problems


def _lint_environment(path: Path, spec: dict, at, root: Path) -> list[str]:
    environment = spec.get("environment")
    environments_dir = (root / "environments").resolve()
    if not isinstance(environment, str) or not environment.startswith("file:"):
        return [f"{at('environment')}: must be file:<path to environments/<name>/environment.yaml>; got {environment!r}"]
    target = (path.parent / environment[len("file:") :]).resolve()
    if not target.is_file():
        return [f"{at('environment')}: {environment} does not exist"]
    if target.parent.parent != environments_dir:
        return [f"{at('environment')}: {environment} is not an environment defined under environments/<name>/"]
    return []


def _lint_code_and_includes(path: Path, spec: dict, at) -> list[str]:
    problems = []
    code = path.parent / str(spec.get("code") or ".")
    if not code.is_dir():
        problems.append(f"{at('code')}: folder {spec.get('code')!r} does not exist")
    includes = spec.get("additional_includes") or []
    if not isinstance(includes, list):
        return problems + [f"{at('additional_includes')}: must be a list of paths"]
    for include in includes:
        if not isinstance(include, str):
            problems.append(f"{at('additional_includes')}: {include!r} is not a path")
        elif not (path.parent / include).exists():
            problems.append(f"{at('additional_includes')}: {include} does not exist")
    return problems


def _lint_command(spec: dict, at) -> list[str]:
    command = spec.get("command")
    if not isinstance(command, str) or not command.strip():
        return [f"{at('command')}: missing"]
    inputs = spec.get("inputs") or {}
    outputs = spec.get("outputs") or {}
    problems = []
    outside, blocks = split_command(command)
    outside_refs = set(REFERENCE.findall(outside))
    block_refs = {ref for block in blocks for ref in REFERENCE.findall(block)}
    for kind, port in sorted(outside_refs | block_refs):
        declared = inputs if kind == "inputs" else outputs
        if port not in declared:
            problems.append(f"{at('command')}: refers to ${{{{{kind}.{port}}}}}, which is not declared")
    for port, port_spec in inputs.items():
        optional = bool(isinstance(port_spec, dict) and port_spec.get("optional"))
        ref = ("inputs", port)
        if ref not in outside_refs | block_refs:
            problems.append(f"{at('inputs', port)}: not used in the command")
        elif optional and ref in outside_refs:
            problems.append(f"{at('inputs', port)}: optional, so it must appear only inside a $[[...]] block")
        elif not optional and ref in block_refs:
            problems.append(f"{at('inputs', port)}: not optional, so it must not be inside a $[[...]] block")
    for port in outputs:
        if ("outputs", port) not in outside_refs | block_refs:
            problems.append(f"{at('outputs', port)}: not used in the command")
    for kind, port in unquoted_references(command):
        port_spec = (inputs if kind == "inputs" else outputs).get(port)
        if isinstance(port_spec, dict) and needs_quoting(port_spec):
            what = "free text" if port_spec.get("type") == "string" else "a path"
            problems.append(
                f"{at(kind, port)}: {what}, so it must be single-quoted in the command ('${{{{{kind}.{port}}}}}'): "
                "Azure ML pastes the value into the command as text and runs it in a shell"
            )
    return problems




def _sdk_problems(path: Path, where: str) -> list[str]:
    """What the Azure ML SDK itself says about the YAML (schema and component validation)."""
    import logging
    import warnings

    from azure.ai.ml import load_component

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.getLogger("azure.ai.ml").setLevel(logging.ERROR)
            component = load_component(source=path)
    except Exception as err:  # the SDK raises several types for schema errors; report them all as problems
        return [f"{where}: Azure ML cannot load the component: {problem}" for problem in _sdk_error_lines(err)]
    result = component._validate()
    return [f"{where}: {field_name}: {message}" for field_name, message in sorted(result.error_messages.items())]


def _sdk_error_lines(err: Exception) -> list[str]:
    """The SDK's schema errors, one line each (`field: message (line N)`), out of its JSON report."""
    import json

    text = str(err)
    start, end = text.find("{"), text.rfind("}")
    try:
        report = json.loads(text[start : end + 1])
        errors = report["errors"]
    except (ValueError, KeyError, TypeError):
        return [" ".join(text.split())]
    lines = []
    for error in errors:
        message = str(error.get("message", "")).splitlines()[0].strip() if error.get("message") else "invalid"
        location = str(error.get("location", ""))
        line = location.rsplit("#line ", 1)[1] if "#line " in location else None
        lines.append(f"{error.get('path', '?')}: {message}" + (f" (line {line})" if line else ""))
    return lines or [" ".join(text.split())]


def import_entry_script(path: Path) -> ModuleType:
    """Import an entry script by path as a fresh module (nothing runs at import, by the rules)."""
    name = "maap_entry_" + re.sub(r"\W", "_", str(path.with_suffix("")))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def check_parser_agreement(spec: dict, parser: argparse.ArgumentParser, where: str = "component") -> list[str]:
    """Problems where the parser's flags disagree with the component's inputs and outputs."""
    inputs = spec.get("inputs") or {}
    outputs = spec.get("outputs") or {}
    ports: dict[str, dict[str, Any]] = {**{k: (v or {}) for k, v in inputs.items()}, **{k: {} for k in outputs}}
    problems = []
    actions = [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]
    positionals = [a.dest for a in parser._actions if not a.option_strings]
    if positionals:
        problems.append(f"{where}: positional arguments {positionals}: every value must be a --flag named after an input")
    flags: dict[str, argparse.Action] = {}
    for action in actions:
        long_names = [s[2:] for s in action.option_strings if s.startswith("--")]
        if len(action.option_strings) != 1 or len(long_names) != 1:
            problems.append(f"{where}: flag {'/'.join(action.option_strings)}: one --<input name> per flag, no aliases")
        for flag in long_names:
            flags[flag] = action
            if action.dest != flag:
                problems.append(f"{where}: --{flag} stores into {action.dest!r}; the dest must be the input name")
    for name in sorted(set(flags) - set(ports)):
        problems.append(f"{where}: --{name} has no input or output of that name in the YAML")
    for name in sorted(set(ports) - set(flags)):
        problems.append(f"{where}: {name} is in the YAML but the parser has no --{name}")
    for name in sorted(set(flags) & set(ports)):
        action = flags[name]
        optional = bool(ports[name].get("optional"))
        if optional and action.required:
            problems.append(f"{where}: --{name} is required, but the input is optional")
        if not optional and not action.required:
            problems.append(f"{where}: --{name} must be required=True (the input is not optional; its default lives in the YAML)")
        if action.default is not None:
            problems.append(f"{where}: --{name} has default {action.default!r}; defaults live only in the YAML")
        if ports[name].get("type") == "boolean" and action.nargs == 0:
            problems.append(f"{where}: --{name} is a switch; a boolean input arrives as a value (True/False): use type=str2bool")
    return problems


def lint_entry_script(path: Path) -> list[str]:
    """Import the component's entry script and compare its parser with the YAML."""
    import yaml

    where = _display(path)
    spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    script = entry_script_path(path, spec)
    if script is None:
        return [f"{where}: command: does not start with `python <script>.py`"]
    if not script.is_file():
        return [f"{where}: entry script {_display(script)} does not exist"]
    try:
        module = import_entry_script(script)
    except Exception as err:
        return [f"{_display(script)}: import failed: {type(err).__name__}: {err}"]
    build_parser = getattr(module, "build_parser", None)
    if not callable(build_parser):
        return [f"{_display(script)}: has no build_parser()"]
    problems = check_parser_agreement(spec, build_parser(), where=_display(script))
    for name in ("parse_args", "run", "main"):
        if not callable(getattr(module, name, None)):
            problems.append(f"{_display(script)}: has no {name}()")
    return problems


def lint_repo(settings=None, root: Path = REPO_ROOT) -> list[str]:
    """Every problem in every component (YAML and parser) and in the pipeline built from `settings`."""
    from maap_finetune.common.errors import UserError

    from pipelines.definition.build import build_pipeline, job_problems
    from pipelines.definition.settings import PipelineSettings

    problems: list[str] = []
    files = component_files(root)
    if not files:
        problems.append(f"no components found under {root / 'components'}")
    for path in files:
        problems += lint_component(path, root)
        problems += lint_entry_script(path)
    if settings is None:
        settings = PipelineSettings(require_base_model=False, require_training_data=False)
    try:
        job = build_pipeline(settings)
    except UserError as err:
        problems.append(f"pipeline: {err}")
    except Exception as err:  # a broken component breaks the build; report it with the others
        problems.append(f"pipeline: cannot be built: {type(err).__name__}: {' '.join(str(err).split())}")
    else:
        found = job_problems(job)
        if not settings.compute:  # checking without --compute: the cluster is chosen at submit time
            found = [p for p in found if not p.endswith("Compute not set")]
        problems += found
    return problems

