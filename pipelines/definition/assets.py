"""What publish.py publishes, built offline: environments, components and the pipeline component, each with
its content hash (`maap.content_sha256`) and its references rewritten for the target workspace or registry."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.definition.inputs import COMPONENTS_DIR, REPO_ROOT

ENVIRONMENTS_DIR = REPO_ROOT / "environments"
PIPELINE_COMPONENT_NAME = "maap_finetune_pipeline"
HASH_TAG = "maap.content_sha256"
IGNORED_PARTS = {"__pycache__", ".pytest_cache", ".ipynb_checkpoints"}
IGNORED_SUFFIXES = {".pyc", ".pyo"}
INPUT_KEYS = ("type", "description", "default", "optional", "enum", "min", "max")


@dataclass
class Asset:
    """One thing to publish: its kind, name, version, content hash and how to build the SDK object."""

    kind: str  # environment | component | pipeline component
    name: str
    version: str
    sha256: str
    source: str  # file it comes from, for messages
    build: Any = field(repr=False, default=None)  # () -> SDK entity with the hash tag set
    status: str = ""  # filled by publish.check_published(): create | unchanged | conflict | unknown
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
    """The pipeline component YAML, derived from pipelines/definition/build.py's DSL pipeline.

    The DSL pipeline's inputs carry no types; each gets the type, default, bounds and description
    of the first component input bound to it, so the published pipeline has the steps' defaults.
    """
    from pipelines.definition.build import build_pipeline
    from pipelines.definition.settings import PipelineSettings

    job = build_pipeline(PipelineSettings(require_base_model=False, require_training_data=False))
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
            raise ValueError(f"pipeline input {name!r} feeds no step")  # guards catalogue edits
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
        "pipeline component", PIPELINE_COMPONENT_NAME, version, sha, "pipelines/definition/build.py",
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
