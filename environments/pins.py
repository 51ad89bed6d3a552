"""One source of truth for the environments' versions, and the checks that keep it so.

The Azure ML environments pin exact versions in their Docker contexts
(`environments/<name>/context/requirements*.txt`); `pyproject.toml` holds the project's ranges.
This module proves that the two agree and that each pinned set resolves with pip's resolver for
the Python and platform the image runs (CPython 3.11, manylinux x86_64) without installing
anything: `pip install --dry-run --ignore-installed --report` against the package index.

    python environments/pins.py check              # pins vs pyproject ranges, tags, base images
    python environments/pins.py resolve train-gpu  # pip dry-run resolution (needs the index)
    python environments/pins.py resolve rft-gpu
    python environments/pins.py resolve cpu

DeepSpeed and flash-attn ship only source distributions, which pip cannot use for a foreign
platform. Their declared requirements are read by building their metadata here (no CUDA build,
`--no-build-isolation` so their setup scripts see this interpreter's torch) and are resolved
together with the wheel-only pins. lm-eval is a wheel, but it requires source-only packages
(rouge-score, sqlitedict, word2number), so it is expanded the same way. Built metadata of an exact release never changes, so it is
cached under `.maap/pin-metadata/`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

ENV_DIR = Path(__file__).resolve().parent
REPO_ROOT = ENV_DIR.parent
PYPROJECT = REPO_ROOT / "pyproject.toml"
CACHE_DIR = REPO_ROOT / ".maap"

# Packages pip cannot resolve for a foreign platform (--only-binary): those published only as source
# distributions, and lm-eval, a wheel that requires three of them. Their declared requirements are
# resolved instead, less those naming each other (each is pinned and expanded itself).
SOURCE_ONLY = frozenset({"deepspeed", "flash-attn", "rouge-score", "sqlitedict", "word2number", "lm-eval"})
# lm-eval's source-only dependencies: pinned here though not ours, so their metadata can be read
LM_EVAL_SOURCE_DEPS = ("sqlitedict", "word2number")
# Environment variables that let their setup scripts emit metadata on a machine without CUDA.
SOURCE_BUILD_ENV = {"FLASH_ATTENTION_SKIP_CUDA_BUILD": "TRUE", "DS_BUILD_OPS": "0", "DS_SKIP_CUDA_CHECK": "1"}
# Where the index serves no PEP 658 metadata files (some mirrors), pip would download every
# wheel whole (torch's CUDA wheel is ~900 MB) to read its dependencies; fast-deps reads only the
# wheel's metadata with HTTP range requests. On PyPI itself pip uses the metadata files.
FAST_DEPS = "--use-feature=fast-deps"
# Newest glibc the base images carry (Ubuntu 22.04: 2.35); wheels needing a newer one are refused.
MAX_GLIBC_MINOR = 35


@dataclass(frozen=True)
class EnvironmentSpec:
    """One environment folder: its YAML, its Docker context and what it must pin."""

    name: str
    requirement_files: tuple[str, ...]
    project_groups: tuple[str, ...]  # "dependencies" and/or optional-dependency groups it must cover
    extra_pins: tuple[str, ...] = field(default_factory=tuple)  # pinned here though not in pyproject

    @property
    def folder(self) -> Path:
        return ENV_DIR / self.name

    @property
    def context(self) -> Path:
        return self.folder / "context"


ENVIRONMENTS: dict[str, EnvironmentSpec] = {
    "train-gpu": EnvironmentSpec(
        name="train-gpu",
        requirement_files=("requirements.txt",),
        project_groups=("dependencies", "gpu"),
        extra_pins=("azureml-inference-server-http", *LM_EVAL_SOURCE_DEPS),
    ),
    # GRPO's Fine-Tune image: train-gpu's stack plus vllm, without the inference server (they cannot share one)
    "rft-gpu": EnvironmentSpec(
        name="rft-gpu",
        requirement_files=("requirements.txt",),
        project_groups=("dependencies", "gpu"),
        extra_pins=("vllm", *LM_EVAL_SOURCE_DEPS),
    ),
    "cpu": EnvironmentSpec(name="cpu", requirement_files=("requirements.txt",), project_groups=("dependencies",),
                           extra_pins=LM_EVAL_SOURCE_DEPS),
}


class PinError(Exception):
    """A pin file or environment definition that breaks the rules; the message names file and line."""


@dataclass(frozen=True)
class Pin:
    name: str  # canonical name
    version: Version
    source: str  # "path:line"

    def __str__(self) -> str:
        return f"{self.name}=={self.version}"


def read_pins(path: Path) -> dict[str, Pin]:
    """Read `name==version` lines; anything else (ranges, URLs, options) is an error."""
    pins: dict[str, Pin] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{path.relative_to(REPO_ROOT)}:{number}"
        try:
            req = Requirement(line)
        except Exception as err:  # packaging raises InvalidRequirement
            raise PinError(f"{where}: not a requirement: {line!r} ({err})") from None
        specs = list(req.specifier)
        if req.url or req.marker or req.extras or len(specs) != 1 or specs[0].operator != "==" or "*" in specs[0].version:
            raise PinError(f"{where}: {line!r} must be an exact pin `name==version` (no ranges, extras, markers or URLs)")
        name = canonicalize_name(req.name)
        if name in pins:
            raise PinError(f"{where}: {name} is pinned twice (first at {pins[name].source})")
        pins[name] = Pin(name, Version(specs[0].version), where)
    return pins


def environment_pins(env: EnvironmentSpec) -> dict[str, Pin]:
    pins: dict[str, Pin] = {}
    for filename in env.requirement_files:
        for name, pin in read_pins(env.context / filename).items():
            if name in pins:
                raise PinError(f"{pin.source}: {name} is pinned twice (first at {pins[name].source})")
            pins[name] = pin
    return pins


def project_requirements(groups: tuple[str, ...], pyproject: Path | None = None) -> dict[str, Requirement]:
    """The project's requirement ranges from pyproject.toml for the given groups."""
    project = tomllib.loads((pyproject or PYPROJECT).read_text())["project"]
    reqs: dict[str, Requirement] = {}
    for group in groups:
        lines = project["dependencies"] if group == "dependencies" else project["optional-dependencies"][group]
        for line in lines:
            req = Requirement(line)
            reqs[canonicalize_name(req.name)] = req
    return reqs


def load_environment_yaml(env: EnvironmentSpec) -> dict:
    import yaml

    return yaml.safe_load((env.folder / "environment.yaml").read_text())


def dockerfile_base_images(env: EnvironmentSpec) -> list[tuple[int, str]]:
    lines = (env.context / "Dockerfile").read_text().splitlines()
    return [(n, line.split()[1]) for n, line in enumerate(lines, 1) if line.strip().upper().startswith("FROM ")]


def dockerfile_python(env: EnvironmentSpec) -> str | None:
    match = re.search(r"\bpython=(\d+\.\d+)\b", (env.context / "Dockerfile").read_text())
    return match.group(1) if match else None


def check_agreement() -> list[str]:
    """Every problem with the pins, collected: ranges, coverage, cross-environment drift, tags, images."""
    problems: list[str] = []
    all_pins: dict[str, dict[str, Pin]] = {}
    for env in ENVIRONMENTS.values():
        try:
            pins = environment_pins(env)
        except PinError as err:
            problems.append(str(err))
            continue
        all_pins[env.name] = pins
        ranges = project_requirements(env.project_groups)
        every_range = project_requirements(("dependencies", "gpu"))
        for name, req in ranges.items():
            if name not in pins:
                problems.append(
                    f"environments/{env.name}: pyproject.toml requires {req} but no requirements file in "
                    f"{env.context.relative_to(REPO_ROOT)} pins {name}"
                )
        for name, pin in pins.items():
            req = every_range.get(name)
            if req is None:
                if name not in env.extra_pins:
                    problems.append(
                        f"{pin.source}: {pin} is not a project dependency in pyproject.toml; add it there "
                        f"or to EnvironmentSpec.extra_pins in environments/pins.py"
                    )
            elif not req.specifier.contains(pin.version, prereleases=True):
                problems.append(f"{pin.source}: {pin} is outside pyproject.toml's range {req}")

        spec = load_environment_yaml(env)
        version = str(spec.get("version", ""))
        if not re.fullmatch(r"\d+\.\d+\.\d+", version):
            problems.append(f"environments/{env.name}/environment.yaml: version must be an explicit semver, got {version!r}")
        for key, value in (spec.get("tags") or {}).items():
            name = canonicalize_name(key)
            if name in pins and str(value) != str(pins[name].version):
                problems.append(
                    f"environments/{env.name}/environment.yaml: tag {key}={value} disagrees with {pins[name].source} ({pins[name]})"
                )
        python_tag = str((spec.get("tags") or {}).get("python", ""))
        docker_python = dockerfile_python(env)
        if python_tag != docker_python:
            problems.append(
                f"environments/{env.name}: environment.yaml tag python={python_tag!r} but the Dockerfile creates python={docker_python!r}"
            )
        images = dockerfile_base_images(env)
        if not images:
            problems.append(f"environments/{env.name}/context/Dockerfile: no FROM line")
        for line, image in images:
            name_part, _, tag = image.rpartition(":")
            if "@sha256:" in image:
                continue
            if not name_part or "/" in tag or not tag or tag == "latest":
                problems.append(
                    f"environments/{env.name}/context/Dockerfile:{line}: base image {image!r} must be pinned by tag (not :latest)"
                )

    # One version per package across environments.
    seen: dict[str, Pin] = {}
    for pins in all_pins.values():
        for name, pin in pins.items():
            first = seen.setdefault(name, pin)
            if first.version != pin.version:
                problems.append(f"{pin.source}: {pin} disagrees with {first.source} ({first})")
    return problems


# --------------------------------------------------------------------------- resolution


def target_markers(python: str) -> dict[str, str]:
    return {
        "python_version": python,
        "python_full_version": f"{python}.0",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "extra": "",
    }


def target_pip_args(python: str) -> list[str]:
    abi = "cp" + python.replace(".", "")
    args = ["--only-binary=:all:", "--python-version", python, "--implementation", "cp"]
    for minor in range(MAX_GLIBC_MINOR, 4, -1):
        args += ["--platform", f"manylinux_2_{minor}_x86_64"]
    args += ["--platform", "manylinux2014_x86_64", "--platform", "manylinux2010_x86_64", "--platform", "manylinux1_x86_64"]
    args += ["--abi", abi, "--abi", "abi3", "--abi", "none"]
    return args


def pip_environment() -> dict[str, str]:
    """This process's environment without pip configuration that would change what resolves.

    Config files and PIP_* settings such as find-links, constraints or extra indexes on a
    developer's machine would make the answer depend on that machine; the index URL, proxy and
    certificate settings are kept so corporate mirrors still work.
    """
    keep = {"PIP_INDEX_URL", "PIP_CERT", "PIP_CLIENT_CERT", "PIP_PROXY", "PIP_TRUSTED_HOST", "PIP_DEFAULT_TIMEOUT", "PIP_RETRIES"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k in keep}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.setdefault("PIP_DEFAULT_TIMEOUT", "60")
    if "PIP_CERT" not in env and Path("/etc/ssl/certs/ca-certificates.crt").exists():
        env["PIP_CERT"] = "/etc/ssl/certs/ca-certificates.crt"
    return env


def run_pip(args: list[str], env: dict[str, str]) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0 and FAST_DEPS in cmd and "fast-deps" in proc.stderr and "invalid choice" in proc.stderr:
        cmd.remove(FAST_DEPS)  # a pip without the feature: fall back to its default
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise PinError(f"pip failed ({proc.returncode}): {' '.join(cmd[3:8])} ...\n{tail}")


def source_only_requirements(pins: list[Pin], python: str) -> dict[str, list[str]]:
    """Runtime requirements declared by source-only pins, for the target Python/platform."""
    cache = CACHE_DIR / "pin-metadata"
    cache.mkdir(parents=True, exist_ok=True)
    metadata: dict[str, dict] = {}
    missing: list[Pin] = []
    for pin in pins:
        cached = cache / f"{pin.name}-{pin.version}.json"
        if cached.exists():
            metadata[pin.name] = json.loads(cached.read_text())
        else:
            missing.append(pin)
    if missing:
        try:
            import torch  # noqa: F401  (their setup scripts import it)
        except ImportError:
            raise PinError(
                "reading DeepSpeed/flash-attn metadata needs torch importable in this interpreter "
                f"({sys.executable}); run `make install` first"
            ) from None
        with tempfile.TemporaryDirectory() as tmp:
            report = Path(tmp) / "report.json"
            env = {**pip_environment(), **SOURCE_BUILD_ENV}
            run_pip(
                ["install", "--dry-run", "--ignore-installed", "--no-deps", "--no-build-isolation", "--quiet",
                 "--report", str(report), *(str(p) for p in missing)],
                env,
            )
            for item in json.loads(report.read_text())["install"]:
                meta = item["metadata"]
                name = canonicalize_name(meta["name"])
                metadata[name] = {"name": name, "version": meta["version"], "requires_dist": meta.get("requires_dist") or []}
                (cache / f"{name}-{meta['version']}.json").write_text(json.dumps(metadata[name], indent=1))
    markers = target_markers(python)
    result: dict[str, list[str]] = {}
    for pin in pins:
        meta = metadata.get(pin.name)
        if meta is None or Version(meta["version"]) != pin.version:
            raise PinError(f"{pin.source}: pip did not find {pin} (got {meta and meta['version']})")
        reqs = []
        for line in meta["requires_dist"]:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate(markers):
                continue
            req.marker = None
            reqs.append(str(req))
        result[pin.name] = reqs
    return result


@dataclass
class Resolution:
    environment: str
    python: str
    installed: dict[str, str]  # canonical name -> version, everything pip would install
    requirements: list[str]  # what was given to pip


def resolve(env_name: str) -> Resolution:
    """Resolve an environment's pins with pip for its target Python on manylinux x86_64."""
    env = ENVIRONMENTS[env_name]
    pins = environment_pins(env)
    python = dockerfile_python(env)
    if python is None:
        raise PinError(f"environments/{env_name}/context/Dockerfile: no `python=X.Y` for the conda env")
    wheel_pins = [p for p in pins.values() if p.name not in SOURCE_ONLY]
    source_pins = [p for p in pins.values() if p.name in SOURCE_ONLY]
    requirements = [str(p) for p in wheel_pins]
    for name, reqs in source_only_requirements(source_pins, python).items():
        requirements += [r for r in reqs if canonicalize_name(Requirement(r).name) not in SOURCE_ONLY]
    with tempfile.TemporaryDirectory() as tmp:
        req_file = Path(tmp) / "requirements.txt"
        req_file.write_text("\n".join(requirements) + "\n")
        report = Path(tmp) / "report.json"
        run_pip(
            ["install", "--dry-run", "--ignore-installed", "--quiet", FAST_DEPS, "--report", str(report),
             *target_pip_args(python), "-r", str(req_file)],
            pip_environment(),
        )
        data = json.loads(report.read_text())
    installed = {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"] for i in data["install"]}
    for pin in wheel_pins:
        if Version(installed.get(pin.name, "0")) != pin.version:
            raise PinError(f"{pin.source}: resolution chose {pin.name}=={installed.get(pin.name)} instead of {pin}")
    return Resolution(env_name, python, installed, requirements)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="pins vs pyproject ranges, cross-environment agreement, tags and base images")
    res = sub.add_parser("resolve", help="resolve an environment's pins with pip --dry-run (needs the package index)")
    res.add_argument("environment", choices=sorted(ENVIRONMENTS))
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            problems = check_agreement()
            for problem in problems:
                print(f"error: {problem}", file=sys.stderr)
            if not problems:
                print("pins agree with pyproject.toml and across environments")
            return 1 if problems else 0
        result = resolve(args.environment)
        print(f"{args.environment}: {len(result.installed)} packages resolve for CPython {result.python} manylinux x86_64")
        for name, version in sorted(result.installed.items()):
            print(f"  {name}=={version}")
        return 0
    except PinError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
