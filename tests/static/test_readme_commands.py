"""The commands the docs show are the ones the CLIs take: every `python <script> ...` and
`make local ARGS=...` in README.md, ARCHITECTURE.md, infra/README.md and the component READMEs parses with that
script's own parser, and the README's offline commands and sweep file build the pipeline (a renamed flag or a
stricter check breaks here first)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.helpers import load_script

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCS = ("README.md", "ARCHITECTURE.md", "infra/README.md", *sorted(
    str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "components").glob("*/README.md")))
SCRIPTS = ("pipelines/submit.py", "pipelines/deploy.py", "pipelines/publish.py", "infra/provision.py")
FENCE = re.compile(r"^\s*```[a-z]*\n(.*?)^\s*```", re.M | re.S)
INLINE = re.compile(r"`([^`\n]+)`")


def _code(text: str) -> list[str]:
    """Logical lines of the fenced blocks (backslash continuations joined) and the inline code spans."""
    blocks = [block.replace("\\\n", " ") for block in FENCE.findall(text)]
    rest = FENCE.sub("", text)
    return [line for block in blocks for line in block.splitlines()] + INLINE.findall(rest)


def doc_commands() -> list[tuple[str, str, list[str]]]:
    """(doc, script, argv) for every documented command line of a repository CLI."""
    found = []
    for doc in DOCS:
        for line in _code((REPO_ROOT / doc).read_text(encoding="utf-8")):
            if not any(script in line for script in SCRIPTS) and "make local" not in line:
                continue  # Python snippets, YAML and prose need not be shell words
            words = shlex.split(line, comments=True)
            for i, word in enumerate(words):
                if word == "python" and i + 1 < len(words) and words[i + 1] in SCRIPTS:
                    argv = [w for w in words[i + 2:] if w != "..."]  # "..." marks "more flags" in prose
                    found.append((doc, words[i + 1], argv))
                elif word == "make" and words[i + 1:i + 2] == ["local"]:
                    args = next((w.split("=", 1)[1] for w in words[i + 2:] if w.startswith("ARGS=")), "")
                    found.append((doc, "pipelines/submit.py", ["--local", *shlex.split(args)]))  # as the Makefile
    return found


COMMANDS = doc_commands()


def test_the_docs_show_commands_of_every_cli():
    scripts = {script for _, script, _ in COMMANDS}
    assert scripts == set(SCRIPTS)


@pytest.mark.parametrize(("doc", "script", "argv"), COMMANDS,
                         ids=[f"{doc}:{Path(script).name} {' '.join(argv)}"[:90] for doc, script, argv in COMMANDS])
def test_documented_command_parses(doc, script, argv):
    module = load_script(f"maap_doc_{Path(script).stem}", REPO_ROOT / script)
    try:
        module.build_parser().parse_args(argv)
    except SystemExit as err:
        pytest.fail(f"{doc}: `python {script} {shlex.join(argv)}` does not parse (exit {err.code})")


def _readme() -> str:
    return (REPO_ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_offline_commands_build_the_pipeline(capsys, monkeypatch):
    from pipelines import submit

    monkeypatch.chdir(REPO_ROOT)
    offline = [argv for doc, script, argv in COMMANDS if doc == "README.md" and script == "pipelines/submit.py"
               and ("--dry-run" in argv or "--validate" in argv) and "--maas" not in argv]
    assert any("--dry-run" in argv for argv in offline) and any("--validate" in argv for argv in offline)
    for argv in offline:
        assert submit.main(argv) == 0, f"`python pipelines/submit.py {shlex.join(argv)}`: {capsys.readouterr().err}"


def test_readme_sweep_file_builds_the_sweep_node(tmp_path, capsys):
    from pipelines import submit

    block = re.search(r"A sweep file uses.*?```yaml\n(.*?)```", _readme(), re.S)
    assert block, "README.md lost its example sweep file"
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(block.group(1))
    code = submit.main(["--dry-run", "--compute", "gpu-cluster", "--sample-data", "--sweep", str(sweep)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "type: sweep" in out
