# The README's two commands: `make local` (whole pipeline on this machine) and `make test` (the fast tier:
# static, unit and one smoke run); `make test-all` runs every test (CI's command). Tiers: tests/conftest.py.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first, pinned: 2.13.0 satisfies the project's range, so pip never swaps in another build.
TORCH_SPEC ?= torch==2.13.0
ARGS ?=

.PHONY: local test test-all install scan clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

# checkov lives in its own venv (its pins clash with the project's); only the tests need it.
$(VENV)/.scanner: $(VENV)/.installed infra/requirements-scan.txt
	$(BIN)/python infra/scan.py --install
	touch $@

install: $(VENV)/.installed

# ARGS reaches submit.py through the environment and shlex, not through the recipe's shell, so values such as
# choice(0.001,0.005) or 'Support bot v2 (July data)' arrive as typed (make exports command-line variables).
local: install
	$(BIN)/python -c 'import os, runpy, shlex, sys; sys.argv[1:] = ["--local", *shlex.split(os.environ.get("ARGS", ""))]; runpy.run_path("pipelines/submit.py", run_name="__main__")'

test: install $(VENV)/.scanner
	$(BIN)/python -m pytest -m "not slow" $(ARGS)

test-all: install $(VENV)/.scanner
	$(BIN)/python -m pytest $(ARGS)

scan: install $(VENV)/.scanner
	$(BIN)/python infra/scan.py

clean:
	rm -rf $(VENV) .maap mlruns.db runs
