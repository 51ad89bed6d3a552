"""The pinned sets resolve with pip's resolver for the images' Python and platform.

Needs the package index (PyPI): marked `network`. Deselect with `-m "not network"`; skipped when the
index cannot be reached, except under CI=true, where an unreachable index is a failure.
Nothing is installed: `pip install --dry-run --ignore-installed --report` for CPython 3.11 on
manylinux x86_64 (no CUDA build of torch is ever downloaded, only metadata).
"""

from __future__ import annotations

import os
import socket
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import pytest

from tests.environments.pins_loader import load_pins

pins = load_pins()

pytestmark = pytest.mark.network
ENVIRONMENTS = ("train-gpu", "rft-gpu", "cpu")


def _index_reachable() -> tuple[bool, str]:
    url = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple")
    host = urlparse(url).hostname or "pypi.org"
    port = urlparse(url).port or 443
    try:
        socket.create_connection((host, port), timeout=5).close()
        return True, host
    except OSError as err:
        return False, f"{host}:{port} unreachable ({err})"


@pytest.fixture(scope="module")
def resolutions():
    ok, detail = _index_reachable()
    if not ok:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(f"package index needed for the resolution test: {detail}")
        pytest.skip(f"package index not reachable: {detail}")
    # The resolutions are mostly waiting on the index: run them side by side.
    with ThreadPoolExecutor(max_workers=len(ENVIRONMENTS)) as pool:
        futures = {name: pool.submit(pins.resolve, name) for name in ENVIRONMENTS}
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("name", ENVIRONMENTS)
def test_pins_resolve_together(resolutions, name):
    result = resolutions[name]
    env_pins = pins.environment_pins(pins.ENVIRONMENTS[name])
    assert result.python == "3.11"
    for pin in env_pins.values():
        if pin.name in pins.SOURCE_ONLY:
            continue
        assert result.installed[pin.name] == str(pin.version), pin
    # Source-only packages' own requirements were part of the resolution.
    if name in {"train-gpu", "rft-gpu"}:
        assert "hjson" in result.installed and "einops" in result.installed  # deepspeed's deps
        assert any(line.startswith("torch") for line in result.requirements)
        # PyPI's torch 2.13.0 for CPython 3.11 manylinux_2_28 is the CUDA 13.0 build (the Dockerfile relies on it).
        assert result.installed["nvidia-cudnn-cu13"] and result.installed["cuda-toolkit"].startswith("13.0")
    if name == "rft-gpu":  # vllm's own stack came along, with the opentelemetry that train-gpu's server pins out
        assert result.installed["vllm"] == "0.30.0" and "xgrammar" in result.installed
        assert int(result.installed["protobuf"].split(".")[0]) >= 6  # onnx 1.23.2's protobuf>=6.31.1 holds


def test_resolved_versions_respect_project_ranges(resolutions):
    ranges = pins.project_requirements(("dependencies", "gpu"))
    for result in resolutions.values():
        for name, version in result.installed.items():
            if name in ranges:
                assert ranges[name].specifier.contains(version, prereleases=True), (name, version, str(ranges[name]))


def test_a_conflicting_pin_fails_resolution(monkeypatch, tmp_path):
    """The resolution check can fail: an impossible pair (trl needs newer transformers) is refused."""
    ok, detail = _index_reachable()
    if not ok:
        pytest.skip(detail)
    import shutil

    root = tmp_path / "repo"
    shutil.copytree(pins.REPO_ROOT / "environments", root / "environments", ignore=shutil.ignore_patterns("__pycache__"))
    req = root / "environments" / "cpu" / "context" / "requirements.txt"
    req.write_text("trl==1.16.0\ntransformers==4.30.0\n")
    monkeypatch.setattr(pins, "ENV_DIR", root / "environments")
    monkeypatch.setattr(pins, "REPO_ROOT", root)
    with pytest.raises(pins.PinError, match="pip failed"):
        pins.resolve("cpu")
