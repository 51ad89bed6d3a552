# The README's two commands: `make local` (whole pipeline on this machine) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first, pinned: 2.13.0 satisfies the project's range, so pip never swaps in another build.
TORCH_SPEC ?= torch==2.13.0
ARGS ?=

.PHONY: local test install scan clean

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

local: install
	$(BIN)/python pipelines/submit.py --local $(ARGS)

test: install $(VENV)/.scanner
	$(BIN)/python -m pytest $(ARGS)

scan: install $(VENV)/.scanner
	$(BIN)/python infra/scan.py

clean:
	rm -rf $(VENV) .maap mlruns.db runs
