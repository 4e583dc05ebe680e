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
	$(BIN)/planner simulate -m deepseek-v3 -c deepseek-v3-h800 --global-batch 15360 --precision fp8 --adam-moments bf16 --moe-dispatch fp8 \
	    --pp 16 --ep 64 --zero 1 --schedule dualpipe --recompute selective
	$(BIN)/planner plan -m deepseek-v3 -c deepseek-v3-h800 --global-batch 15360 --precision fp8 --adam-moments bf16 --moe-dispatch fp8 \
	    --tp 1 --pp 8,16 --ep 16,32,64 --micro-batch 1,2 --zero 1 --recompute selective \
	    --schedule 1f1b,dualpipe

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q

test-all: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q -m ''

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
