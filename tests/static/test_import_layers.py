"""The imports, read from the source (function-level imports included): no circle anywhere in pipelines/ or
src/, and pipelines/ keeps its layers (ARCHITECTURE.md): definition/ never imports local/ or the commands,
local/ never imports the build, the settings, the lint or the commands, maas.py never imports submit.py."""

from __future__ import annotations

import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMANDS = {"pipelines.submit", "pipelines.deploy", "pipelines.publish", "pipelines.local_run"}


def _module_name(path: Path) -> str:
    relative = path.relative_to(REPO_ROOT / "src") if path.is_relative_to(REPO_ROOT / "src") else path.relative_to(REPO_ROOT)
    parts = list(relative.with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    files = [*(REPO_ROOT / "pipelines").rglob("*.py"), *(REPO_ROOT / "src" / "maap_finetune").rglob("*.py")]
    return {_module_name(path): path for path in files}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` imports, anywhere in the file."""
    found: set[str] = set()
    package = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else _module_name(path)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and not modules[name].name == "__init__.py":
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(path, modules) - {name} for name, path in modules.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_walk_sees_function_level_imports():
    graph = import_graph()
    assert "pipelines.definition.build" in graph["pipelines.submit"]  # imported inside submit()
    assert "pipelines.definition.inputs" in graph["pipelines.definition.sweep"]


def test_no_import_circle_in_pipelines_or_src():
    assert circles(import_graph()) == []


def test_the_circle_finder_finds_one():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_pipelines_layers():
    graph = import_graph()
    broken = []
    for module, targets in graph.items():
        if module.startswith("pipelines.definition."):
            broken += [(module, t) for t in targets if t.startswith("pipelines.local.") or t in COMMANDS]
        if module.startswith("pipelines.local."):
            broken += [(module, t) for t in targets if t in COMMANDS or t in {
                "pipelines.definition.build", "pipelines.definition.settings", "pipelines.definition.lint"}]
        if module == "pipelines.maas":
            broken += [(module, t) for t in targets if t in COMMANDS]
    assert broken == []


def test_the_local_runners_neither_import_the_other():
    graph = import_graph()
    assert "pipelines.local.runner" not in graph["pipelines.local.sweep"]
    assert "pipelines.local.sweep" not in graph["pipelines.local.step"]
    assert {"pipelines.local.step", "pipelines.local.sweep"} <= graph["pipelines.local.runner"]  # the chooser, above both
