"""Write components/<step>/README.md for every component, generated from its spec.yaml.

    python tools/generate_component_readmes.py          # (re)write every README
    python tools/generate_component_readmes.py --check  # exit 1 and name each stale README

The README is derived from the YAML only (plus the environment YAML it references and the list of
other Markdown files in the folder),
so it cannot drift from the component: tests/static/test_component_readmes.py fails when a
committed README differs from what this script generates from the current spec.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
from pipelines.definition.environments import FINETUNE_ENVIRONMENT_BY_METHOD  # noqa: E402
from pipelines.definition.inputs import FINETUNE_STEP, PATH_TYPES  # noqa: E402  (the one list of path-valued input types)

COMPONENTS_DIR = REPO_ROOT / "components"
HEADER = "<!-- Generated from spec.yaml by tools/generate_component_readmes.py; do not edit by hand. -->"


def component_dirs(root: Path = COMPONENTS_DIR) -> list[Path]:
    return sorted(p.parent for p in root.glob("*/spec.yaml"))


def _cell(text: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, str):
        return value if value else "''"
    return str(value)


def _code(value: Any) -> str:
    text = _literal(value)
    return f"`{text}`" if text else ""


def _allowed(spec: dict) -> str:
    parts = []
    if "enum" in spec:
        parts.append(", ".join(_code(v) for v in spec["enum"]))
    if "min" in spec and "max" in spec:
        parts.append(f"{_literal(spec['min'])} to {_literal(spec['max'])}")
    elif "min" in spec:
        parts.append(f"≥ {_literal(spec['min'])}")
    elif "max" in spec:
        parts.append(f"≤ {_literal(spec['max'])}")
    return "; ".join(parts)


def _is_required(spec: dict) -> bool:
    return not spec.get("optional", False) and "default" not in spec


def _yaml_example(name: str, spec: dict) -> str:
    """A value for `name` in a pipeline YAML: bind required inputs to pipeline inputs."""
    return f"${{{{parent.inputs.{name}}}}}"


def _python_example(name: str, spec: dict) -> str:
    kind = spec.get("type")
    if kind in PATH_TYPES:
        return f'Input(type="{kind}", path="azureml:<{name}-asset>:<version>")'
    if kind == "boolean":
        return "True"
    if kind in ("integer", "number"):
        return "<number>"
    return f'"<{name}>"'


def _environment(folder: Path, reference: str) -> str:
    """The environment reference, and the name it is published under when it is a local file."""
    if not reference.startswith("file:"):
        return f"`{reference}`"
    env_yaml = (folder / reference[len("file:"):]).resolve()
    if not env_yaml.exists():
        return f"`{reference}`"
    env = yaml.safe_load(env_yaml.read_text())
    rel = env_yaml.relative_to(REPO_ROOT).as_posix() if env_yaml.is_relative_to(REPO_ROOT) else reference
    return f"`{env['name']}:{env['version']}` from [{rel}](../../{rel}) (published as `azureml:{env['name']}:{env['version']}`)"


def inputs_table(inputs: dict[str, dict]) -> list[str]:
    if not inputs:
        return ["This component has no inputs."]
    lines = [
        "| Name | Type | Default | Allowed values | Optional | Description |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, spec in inputs.items():
        default = _code(spec["default"]) if "default" in spec else ""
        optional = "yes" if spec.get("optional", False) else "no"
        lines.append(
            f"| `{name}` | {spec.get('type', '')} | {_cell(default)} | {_cell(_allowed(spec))} | {optional} | "
            f"{_cell(spec.get('description', ''))} |"
        )
    return lines


def outputs_table(outputs: dict[str, dict]) -> list[str]:
    if not outputs:
        return ["This component has no outputs."]
    lines = ["| Name | Type | Description |", "| --- | --- | --- |"]
    for name, spec in outputs.items():
        lines.append(f"| `{name}` | {spec.get('type', '')} | {_cell(spec.get('description', ''))} |")
    return lines


def render(folder: Path) -> str:
    """The README for the component in `folder`, from its spec.yaml."""
    spec = yaml.safe_load((folder / "spec.yaml").read_text())
    step = folder.name
    name, version = spec["name"], str(spec["version"])
    display = spec.get("display_name", name)
    inputs: dict[str, dict] = spec.get("inputs") or {}
    outputs: dict[str, dict] = spec.get("outputs") or {}
    required = [n for n, s in inputs.items() if _is_required(s)]
    rel_spec = f"components/{step}/spec.yaml"

    out: list[str] = [HEADER, "", f"# {display}", "", " ".join(str(spec.get("description", "")).split()), ""]
    facts = [
        f"- **Name:** `{name}`",
        f"- **Version:** `{version}`",
        f"- **Type:** {spec.get('type', 'command')} component",
        f"- **Environment:** {_environment(folder, str(spec.get('environment', '')))}",
    ]
    if step == FINETUNE_STEP:  # the pipeline's per-method override (pipelines/definition/environments.py)
        facts += [f"- **Environment with training_method {method}:** "
                  f"{_environment(folder, f'file:../../environments/{env}/environment.yaml')}; pipelines/submit.py "
                  "runs the step there" for method, env in FINETUNE_ENVIRONMENT_BY_METHOD.items()]
    if spec.get("distribution"):
        facts.append(f"- **Distribution:** {spec['distribution'].get('type', '')} (set nodes and processes per node when you use it)")
    if "is_deterministic" in spec:
        facts.append(f"- **Deterministic (reusable results):** {_literal(spec['is_deterministic'])}")
    out += facts + ["", "## Inputs", ""] + inputs_table(inputs) + ["", "## Outputs", ""] + outputs_table(outputs) + [""]

    # --- studio
    out += [
        "## Use it",
        "",
        "### Azure ML studio (designer)",
        "",
        "1. Publish the components once: `python pipelines/publish.py --workspace <ws> --resource-group <rg> "
        "--subscription <id>` (or `--registry <name>` to share them through an Azure ML registry).",
        f"2. In studio, open **Designer** → new pipeline → **Custom** components (or **Assets → Components**) and "
        f"search for **{display}** (`{name}`, version `{version}`).",
        "3. Drag it onto the canvas, connect "
        + (", ".join(f"`{n}`" for n in required) if required else "its inputs")
        + ", set the other inputs in the right-hand panel (defaults as in the table above), and pick a compute "
        "cluster under **Run settings**.",
        "",
    ]

    # --- CLI
    yaml_lines = [
        "jobs:",
        f"  {step}:",
        "    type: command",
        f"    component: azureml:{name}:{version}   # or file:../{rel_spec}",
        "    inputs:",
    ]
    for input_name in required:
        yaml_lines.append(f"      {input_name}: {_yaml_example(input_name, inputs[input_name])}")
    for input_name, input_spec in inputs.items():
        if input_name in required:
            continue
        shown = _literal(input_spec["default"]) if "default" in input_spec else "<value>"
        note = "default" if "default" in input_spec else "optional"
        yaml_lines.append(f"      # {input_name}: {shown}   ({note})")
    if outputs:
        yaml_lines.append("    outputs:")
        for output_name in outputs:
            yaml_lines.append(f"      {output_name}: ${{{{parent.outputs.{output_name}}}}}")
    out += [
        "### Azure CLI",
        "",
        "Register this component in a workspace (`az extension add --name ml` once):",
        "",
        "```bash",
        f"az ml component create --file {rel_spec} --resource-group <rg> --workspace-name <ws>",
        f"az ml component show --name {name} --version {version} --resource-group <rg> --workspace-name <ws>",
        "```",
        "",
        "Use it as a step of a pipeline job YAML (`az ml job create --file pipeline.yaml`):",
        "",
        "```yaml",
        *yaml_lines,
        "```",
        "",
    ]

    # --- Python SDK
    kwargs = ", ".join(f"{n}={_python_example(n, inputs[n])}" for n in required)
    out += [
        "### Python SDK (azure-ai-ml)",
        "",
        "```python",
        "from azure.ai.ml import Input, MLClient, dsl, load_component",
        "from azure.identity import DefaultAzureCredential",
        "",
        "ml_client = MLClient.from_config(DefaultAzureCredential())  # config.json of your workspace",
        f'{step} = load_component(source="{rel_spec}")  # from this repository',
        f'# or the published one: {step} = ml_client.components.get(name="{name}", version="{version}")',
        "",
        "@dsl.pipeline(default_compute=\"<cluster>\")",
        "def my_pipeline():",
        f"    step = {step}({kwargs})",
        "    return {" + ", ".join(f'"{o}": step.outputs.{o}' for o in outputs) + "}",
        "",
        "ml_client.jobs.create_or_update(my_pipeline(), experiment_name=\"maap-finetune\")",
        "```",
        "",
        "The whole pipeline (data prep → fine-tune → evaluate → register → export ONNX) is built by `pipelines/definition/build.py` and "
        "submitted with `python pipelines/submit.py`; see the repository README.",
        "",
    ]

    extra_docs = sorted(p.name for p in folder.glob("*.md") if p.name != "README.md")
    out += ["## More", "", "- Contracts between the steps (prepared data, model folders, outputs): [ARCHITECTURE.md](../../ARCHITECTURE.md)"]
    out += [f"- [{doc}]({doc})" for doc in extra_docs]
    out.append("")
    return "\n".join(out)


def stale_readmes(root: Path = COMPONENTS_DIR) -> list[Path]:
    stale = []
    for folder in component_dirs(root):
        readme = folder / "README.md"
        if not readme.exists() or readme.read_text() != render(folder):
            stale.append(readme)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate components/<step>/README.md from each spec.yaml.")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if any README is stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_readmes()
        for readme in stale:
            print(f"stale: {readme.relative_to(REPO_ROOT)} (run python tools/generate_component_readmes.py)", file=sys.stderr)
        return 1 if stale else 0
    for folder in component_dirs():
        (folder / "README.md").write_text(render(folder))
        print(f"wrote {(folder / 'README.md').relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
