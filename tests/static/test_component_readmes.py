"""Component READMEs are generated from spec.yaml and never stale."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO_ROOT, load_script


gen = load_script("maap_generate_component_readmes", REPO_ROOT / "tools" / "generate_component_readmes.py")
COMPONENTS = [p.name for p in gen.component_dirs()]


def test_every_component_is_covered():
    assert set(COMPONENTS) >= {"data_prep", "finetune", "evaluate", "register"}


@pytest.mark.parametrize("step", COMPONENTS)
def test_readme_is_current(step):
    folder = REPO_ROOT / "components" / step
    readme = folder / "README.md"
    assert readme.exists(), f"{readme} missing: run python tools/generate_component_readmes.py"
    assert readme.read_text() == gen.render(folder), (
        f"components/{step}/README.md is stale (spec.yaml changed): run python tools/generate_component_readmes.py"
    )


@pytest.mark.parametrize("step", COMPONENTS)
def test_readme_shows_the_spec(step):
    folder = REPO_ROOT / "components" / step
    spec = yaml.safe_load((folder / "spec.yaml").read_text())
    text = gen.render(folder)
    assert f"# {spec['display_name']}" in text
    assert f"**Version:** `{spec['version']}`" in text
    for name, inp in spec["inputs"].items():
        row = next(line for line in text.splitlines() if line.startswith(f"| `{name}` |"))
        assert f"| {inp['type']} |" in row
        if "default" in inp:
            assert f"`{gen._literal(inp['default'])}`" in row
        for value in inp.get("enum", []):
            assert f"`{gen._literal(value)}`" in row
        assert ("| yes |" in row) == bool(inp.get("optional", False))
    for name in spec["outputs"]:
        assert any(line.startswith(f"| `{name}` |") for line in text.splitlines())
    assert f"az ml component create --file components/{step}/spec.yaml" in text
    assert f'load_component(source="components/{step}/spec.yaml")' in text
    assert f"component: azureml:{spec['name']}:{spec['version']}" in text
    assert "Designer" in text


def test_a_spec_change_makes_the_readme_stale(tmp_path):
    root = tmp_path / "components"
    shutil.copytree(REPO_ROOT / "components" / "register", root / "register")
    (root / "register" / "README.md").write_text(gen.render(root / "register"))
    assert gen.stale_readmes(root) == []
    spec_path = root / "register" / "spec.yaml"
    spec_path.write_text(spec_path.read_text().replace("version: 0.1.0", "version: 0.1.1", 1))
    assert gen.stale_readmes(root) == [root / "register" / "README.md"]


def test_generated_yaml_snippet_is_valid_yaml():
    text = gen.render(REPO_ROOT / "components" / "finetune")
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    jobs = yaml.safe_load(block)["jobs"]["finetune"]
    assert jobs["component"].startswith("azureml:maap_finetune:")
    assert jobs["inputs"]["train_data"] == "${{parent.inputs.train_data}}"


def test_generated_python_snippet_compiles():
    for step in COMPONENTS:
        text = gen.render(REPO_ROOT / "components" / step)
        block = text.split("```python\n", 1)[1].split("```", 1)[0]
        compile(block, f"{step}/README.md", "exec")
