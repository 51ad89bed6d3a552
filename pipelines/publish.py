"""Publish the environments, the components and the pipeline to Azure ML, with explicit versions.

    python pipelines/publish.py --dry-run                     # list what would be published (offline)
    python pipelines/publish.py                               # workspace from config.json
    python pipelines/publish.py --subscription <id> --resource-group <rg> --workspace <ws>
    python pipelines/publish.py --registry <registry-name>    # share through an Azure ML registry

What is published, in order:
  1. environments/<name>/environment.yaml      as environment <name>:<version> (built by Azure ML)
  2. components/<step>/spec.yaml               as command component <name>:<version>, its
     environment pointing at the published one (azureml:<env>:<version>, or the registry's URI)
  3. the pipeline of pipelines/factory.py      as pipeline component maap_finetune_pipeline:<version>
     (the project version unless --pipeline-version), its steps pointing at the published components.

Afterwards data scientists find them in studio (Designer → Custom components, Assets → Components,
Environments) and with `az ml component list` / `az ml environment list`.

A version is never overwritten with different content: each asset carries the tag
maap.content_sha256 (its YAML after the reference rewrite plus every file of its code or build
context). An existing version with the same hash is left alone; one with another hash, or without
the tag, stops the publish before anything is created: bump the version in the YAML.

Workspace: --subscription/--resource-group/--workspace, else AZURE_SUBSCRIPTION_ID, AZURE_RESOURCE_GROUP
and AZUREML_WORKSPACE_NAME, else config.json (or --config); --registry NAME publishes to a registry.
Credentials: DefaultAzureCredential (az login, managed identity, AZURE_CLIENT_ID/...).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `pipelines` and the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO_ROOT = Path(__file__).resolve().parents[1]
ENVIRONMENTS_DIR = REPO_ROOT / "environments"
COMPONENTS_DIR = REPO_ROOT / "components"
PIPELINE_COMPONENT_NAME = "maap_finetune_pipeline"
HASH_TAG = "maap.content_sha256"
EXIT_USER_ERROR = 2
IGNORED_PARTS = {"__pycache__", ".pytest_cache", ".ipynb_checkpoints"}
IGNORED_SUFFIXES = {".pyc", ".pyo"}
INPUT_KEYS = ("type", "description", "default", "optional", "enum", "min", "max")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="publish.py",
        description="Publish maap-finetune's environments, components and pipeline component to Azure ML.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
        allow_abbrev=False,
    )
    parser.add_argument("--dry-run", action="store_true", help="list what would be published; create nothing")
    parser.add_argument(
        "--pipeline-version", help="version of the pipeline component (default: the project version in pyproject.toml)"
    )
    target = parser.add_argument_group("where to publish (a workspace, or a registry with --registry)")
    target.add_argument("--registry", help="name of an Azure ML registry to publish to instead of a workspace")
    from pipelines.submit import add_workspace_arguments

    add_workspace_arguments(target)
    return parser


# ------------------------------------------------------------------------------------------
# What gets published


@dataclass
class Asset:
    """One thing to publish: its kind, name, version, content hash and how to build the SDK object."""

    kind: str  # environment | component | pipeline component
    name: str
    version: str
    sha256: str
    source: str  # file it comes from, for messages
    build: Any = field(repr=False, default=None)  # () -> SDK entity with the hash tag set
    status: str = ""  # filled by plan(): create | unchanged | conflict | unknown
    detail: str = ""
    entity: Any = field(repr=False, default=None)  # the built SDK object, after prepare()

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name}:{self.version}"


def _files(paths: Iterable[Path]) -> list[tuple[str, Path]]:
    """(relative name, path) of every file under the given files/folders, sorted, caches excluded."""
    found: dict[str, Path] = {}
    for root in paths:
        candidates = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in candidates:
            if IGNORED_PARTS.intersection(path.parts) or path.suffix in IGNORED_SUFFIXES:
                continue
            found[path.relative_to(root.parent).as_posix()] = path
    return sorted(found.items())


def content_hash(definition: Any, files: Iterable[tuple[str, Path]] = ()) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(definition, sort_keys=True, default=str).encode())
    for name, path in files:
        digest.update(b"\0file\0" + name.encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def _quiet_sdk() -> None:
    logging.getLogger("azure").setLevel(logging.ERROR)
    logging.getLogger("azure.ai.ml").setLevel(logging.ERROR)


@dataclass(frozen=True)
class Target:
    """A workspace (registry None) or a registry; decides how published assets are referenced."""

    registry: str | None = None

    def environment_ref(self, name: str, version: str) -> str:
        if self.registry:
            return f"azureml://registries/{self.registry}/environments/{name}/versions/{version}"
        return f"azureml:{name}:{version}"

    def component_ref(self, name: str, version: str) -> str:
        if self.registry:
            return f"azureml://registries/{self.registry}/components/{name}/versions/{version}"
        return f"azureml:{name}:{version}"


def environment_assets() -> dict[str, Asset]:
    """Environment folder name -> Asset, for every environments/<name>/environment.yaml."""
    assets = {}
    for yaml_path in sorted(ENVIRONMENTS_DIR.glob("*/environment.yaml")):
        spec = _yaml(yaml_path)
        context = yaml_path.parent / spec.get("build", {}).get("path", "context")
        sha = content_hash(spec, _files([yaml_path, context]))

        def build(yaml_path=yaml_path, sha=sha):
            from azure.ai.ml import load_environment

            env = load_environment(source=yaml_path)
            env.tags = {**(env.tags or {}), HASH_TAG: sha}
            return env

        assets[yaml_path.parent.name] = Asset(
            "environment", spec["name"], str(spec["version"]), sha, str(yaml_path.relative_to(REPO_ROOT)), build
        )
    return assets


def _environment_folder(reference: str, spec_path: Path) -> str:
    """The environments/<folder> a component's `environment: file:...` points at."""
    from maap_finetune.common.errors import UserError

    if not reference.startswith("file:"):
        raise UserError(f"{spec_path.relative_to(REPO_ROOT)}: environment must be file:../../environments/<name>/environment.yaml, got {reference!r}")
    target = (spec_path.parent / reference[len("file:"):]).resolve()
    if target.parent.parent != ENVIRONMENTS_DIR or not target.exists():
        raise UserError(f"{spec_path.relative_to(REPO_ROOT)}: environment {reference!r} is not one of environments/*/environment.yaml")
    return target.parent.name


def component_assets(target: Target, environments: dict[str, Asset]) -> dict[str, Asset]:
    """Step folder name -> Asset for every components/<step>/spec.yaml, environment rewritten."""
    assets = {}
    for spec_path in sorted(COMPONENTS_DIR.glob("*/spec.yaml")):
        spec = _yaml(spec_path)
        env = environments[_environment_folder(spec["environment"], spec_path)]
        env_ref = target.environment_ref(env.name, env.version)
        definition = {**spec, "environment": env_ref}
        code = (spec_path.parent / spec.get("code", ".")).resolve()
        includes = [(spec_path.parent / inc).resolve() for inc in spec.get("additional_includes") or []]
        sha = content_hash(definition, _files([code, *includes]))

        def build(spec_path=spec_path, env_ref=env_ref, sha=sha):
            from azure.ai.ml import load_component

            component = load_component(source=spec_path)
            component.environment = env_ref
            component.tags = {**(component.tags or {}), HASH_TAG: sha}
            return component

        assets[spec_path.parent.name] = Asset(
            "component", spec["name"], str(spec["version"]), sha, str(spec_path.relative_to(REPO_ROOT)), build
        )
    return assets


def project_version() -> str:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    return str(tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"])


def _binding(value: Any) -> Any:
    """A node input as the DSL dumps it ({path: ${{...}}}) in the plain YAML form."""
    if isinstance(value, dict) and set(value) == {"path"}:
        return value["path"]
    return value


def pipeline_definition(target: Target, components: dict[str, Asset], version: str) -> dict:
    """The pipeline component YAML, derived from pipelines/factory.py's DSL pipeline.

    The DSL pipeline's inputs carry no types; each gets the type, default, bounds and description
    of the first component input bound to it, so the published pipeline has the steps' defaults.
    """
    from pipelines import factory

    job = factory.build_pipeline(factory.PipelineSettings(require_base_model=False, require_training_data=False))
    dumped = job.component._to_dict()
    spec_by_step = {step: _yaml(COMPONENTS_DIR / step / "spec.yaml") for step in dumped["jobs"]}

    # Pipeline input -> the (step, component input) pairs bound to it.
    consumers: dict[str, list[tuple[str, str]]] = {}
    for step, node in dumped["jobs"].items():
        for input_name, value in (node.get("inputs") or {}).items():
            bound = _binding(value)
            if isinstance(bound, str) and bound.startswith("${{parent.inputs.") and bound.endswith("}}"):
                consumers.setdefault(bound[len("${{parent.inputs."):-2], []).append((step, input_name))
    inputs: dict[str, dict] = {}
    for name in job.component.inputs:
        if name not in consumers:
            raise ValueError(f"pipeline input {name!r} feeds no step")  # guards factory edits
        specs = [spec_by_step[step]["inputs"][inp] for step, inp in consumers[name]]
        entry = {key: copy.deepcopy(specs[0][key]) for key in INPUT_KEYS if key in specs[0]}
        if any(spec.get("optional", False) for spec in specs):
            entry["optional"] = True
        inputs[name] = entry

    jobs: dict[str, dict] = {}
    outputs: dict[str, dict] = {}
    for step, node in dumped["jobs"].items():
        asset = components[step]
        entry = {"type": node.get("type", "command"), "component": target.component_ref(asset.name, asset.version)}
        if node.get("inputs"):
            entry["inputs"] = {k: _binding(v) for k, v in node["inputs"].items()}
        if node.get("outputs"):
            entry["outputs"] = {k: _binding(v) for k, v in node["outputs"].items()}
            for out_name, out_value in entry["outputs"].items():
                if isinstance(out_value, str) and out_value.startswith("${{parent.outputs."):
                    parent_name = out_value[len("${{parent.outputs."):-2]
                    source = spec_by_step[step]["outputs"][out_name]
                    outputs[parent_name] = {key: source[key] for key in ("type", "description") if key in source}
        for key in ("resources", "distribution"):
            if node.get(key):
                entry[key] = copy.deepcopy(node[key])
        jobs[step] = entry

    return {
        "$schema": "https://azuremlschemas.azureedge.net/latest/pipelineComponent.schema.json",
        "type": "pipeline",
        "name": PIPELINE_COMPONENT_NAME,
        "version": version,
        "display_name": dumped.get("display_name") or job.component.display_name,
        "description": dumped.get("description") or job.component.description,
        "inputs": inputs,
        "outputs": outputs,
        "jobs": jobs,
    }


def load_pipeline_component(definition: dict, sha: str):
    """The SDK PipelineComponent for a definition (loaded from YAML, so it is validated like a file)."""
    import yaml
    from azure.ai.ml import load_component

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pipeline_component.yaml"
        path.write_text(yaml.safe_dump({**definition, "tags": {HASH_TAG: sha}}, sort_keys=False))
        return load_component(source=path)


def pipeline_asset(target: Target, components: dict[str, Asset], version: str) -> Asset:
    definition = pipeline_definition(target, components, version)
    sha = content_hash(definition)
    return Asset(
        "pipeline component", PIPELINE_COMPONENT_NAME, version, sha, "pipelines/factory.py",
        lambda: load_pipeline_component(definition, sha),
    )


def all_assets(target: Target, pipeline_version: str | None) -> list[Asset]:
    _quiet_sdk()
    environments = environment_assets()
    components = component_assets(target, environments)
    pipeline = pipeline_asset(target, components, pipeline_version or project_version())
    return [*environments.values(), *components.values(), pipeline]


def prepare(assets: list[Asset]) -> None:
    """Build every SDK object and validate it offline; collect every problem before any network call."""
    from maap_finetune.common.errors import ConfigErrors

    problems = []
    for asset in assets:
        asset.entity = asset.build()
        validate = getattr(asset.entity, "_validate", None)
        if validate is not None:
            result = validate()
            problems += [f"{asset.label} ({asset.source}): {where}: {msg}" for where, msg in sorted(result.error_messages.items())]
    if problems:
        raise ConfigErrors(problems, header="cannot publish: invalid assets")


# ------------------------------------------------------------------------------------------
# Talking to Azure ML


def _operations(ml_client, asset: Asset):
    return ml_client.environments if asset.kind == "environment" else ml_client.components


def plan(ml_client, assets: list[Asset]) -> None:
    """Set each asset's status: create, unchanged or conflict (read-only calls)."""
    from azure.core.exceptions import ResourceNotFoundError

    for asset in assets:
        try:
            existing = _operations(ml_client, asset).get(name=asset.name, version=asset.version)
        except ResourceNotFoundError:
            asset.status = "create"
            continue
        published = (getattr(existing, "tags", None) or {}).get(HASH_TAG)
        if published == asset.sha256:
            asset.status, asset.detail = "unchanged", "already published with the same content"
        elif published is None:
            asset.status, asset.detail = "conflict", f"exists without the {HASH_TAG} tag, so its content cannot be compared"
        else:
            asset.status, asset.detail = "conflict", f"exists with different content (sha256 {published[:12]}, here {asset.sha256[:12]})"


def connect(args: argparse.Namespace):
    """MLClient for the registry (--registry) or the workspace (flags, environment, config.json)."""
    from pipelines import submit

    if not args.registry:
        return submit.connect(args)
    from azure.ai.ml import MLClient
    from azure.identity import DefaultAzureCredential

    logging.getLogger("azure.identity").setLevel(logging.ERROR)
    # Constructing a registry client already calls Azure (it looks up the registry's region).
    with submit.azure_errors(f"connecting to registry {args.registry!r}"):
        return MLClient(
            DefaultAzureCredential(), subscription_id=args.subscription, resource_group_name=args.resource_group,
            registry_name=args.registry,
        )


def _where(args: argparse.Namespace) -> str:
    return f"registry {args.registry!r}" if args.registry else "the workspace"


def publish(args: argparse.Namespace) -> list[Asset]:
    from maap_finetune.common.errors import UserError
    from pipelines import submit

    if args.registry and args.workspace:
        raise UserError("give --registry or --workspace, not both")
    assets = all_assets(Target(args.registry), args.pipeline_version)
    prepare(assets)
    workspace_given = bool(args.registry) or submit.workspace_from_args(args) is not None or args.config
    if args.dry_run and not workspace_given:
        try:
            ml_client = connect(args)  # config.json in this folder or a parent, when there is one
        except UserError:
            for asset in assets:
                asset.status = "unknown"
            return assets
    else:
        ml_client = connect(args)
    with submit.azure_errors(f"reading what {_where(args)} has published"):
        plan(ml_client, assets)
    conflicts = [a for a in assets if a.status == "conflict"]
    if conflicts and not args.dry_run:
        lines = "; ".join(f"{a.label} ({a.source}) {a.detail}" for a in conflicts)
        raise UserError(
            f"refusing to overwrite published versions: {lines}. Bump the version in the YAML "
            f"(or --pipeline-version) and publish again; nothing was created"
        )
    if args.dry_run:
        return assets
    for asset in assets:
        if asset.status != "create":
            continue
        with submit.azure_errors(f"publishing {asset.label} to {_where(args)}"):
            _operations(ml_client, asset).create_or_update(asset.entity)
        asset.status, asset.detail = "created", ""
        print(f"{asset.label}: created", flush=True)
    return assets


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from maap_finetune.common.errors import UserError

    try:
        assets = publish(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    verb = {"create": "would create", "unknown": "would publish", "conflict": "CONFLICT"}
    if args.dry_run and any(a.status == "unknown" for a in assets):
        print("dry run, no workspace or registry given: not compared with what is already published")
    for asset in assets:
        if args.dry_run or asset.status != "created":
            status = verb.get(asset.status, asset.status) if args.dry_run else asset.status
            print(f"{asset.label}: {status}" + (f" ({asset.detail})" if asset.detail else ""))
    if args.dry_run and any(a.status == "conflict" for a in assets):
        print("error: some versions exist with different content; bump their versions before publishing", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
