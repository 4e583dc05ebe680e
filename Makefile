# Two-command setup: `make demo` and `make test`, on a machine with Python 3.11.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch==2.13.0 is a CPU build on local disk here; installing it first keeps the
# `model` extra from pulling a multi-GB CUDA build.
TORCH  := torch==2.13.0

.PHONY: demo test test-all install dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Runtime install: what `make demo` needs.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

# Development install: torch first, then the project with its test extra.
$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install --quiet $(TORCH) || echo "warning: $(TORCH) not installed; torch-based tests will be skipped"
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed
dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(BIN)/planner describe --model deepseek-v3

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q

test-all: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q -m ''

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
