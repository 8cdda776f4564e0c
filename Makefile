# kdcl developer entry points. `make train` and `make test` work on a fresh machine: they set up first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kdcl-installed
DEV_STAMP := $(VENV)/.kdcl-dev-installed
# The torch/torchvision pair kdcl is tested with; `make setup TORCH_PINS=` lets pip choose within the ranges.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
ARGS ?=

.PHONY: help setup train test test-fast lint format fashion-mnist clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

# What the main job needs: kdcl and its `export` extra (ONNX Runtime times the report's latency)
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@if [ -n "$(TORCH_PINS)" ]; then $(BIN)/pip install $(TORCH_PINS); fi
	$(BIN)/pip install -e '.[export]'
	touch $(STAMP)

# The suite's tools and every optional extra it exercises (loggers, launchers, search)
$(DEV_STAMP): $(STAMP)
	$(BIN)/pip install -e '.[dev]'
	touch $(DEV_STAMP)

setup: $(DEV_STAMP)  ## create .venv and install kdcl with its test tools

train: $(STAMP)  ## run the main job: ResNet-18 → MobileNetV3 on the bundled digits (ARGS='teacher=resnet50 ...')
	$(BIN)/kdcl train $(ARGS)

# The suite in WORKERS processes (pytest-xdist), each test file whole in one of them (its module fixtures are
# built once), each with its share of the cores (tests/conftest.py): both cores of a 2-core machine stay busy
# through the suite's serial parts (imports, process starts, Hydra, file I/O). WORKERS=0: one process.
WORKERS ?= 2
test: $(DEV_STAMP)  ## run the whole test suite
	$(BIN)/python -m pytest tests -n $(WORKERS) --dist loadfile --durations=10 $(ARGS)

test-fast: $(DEV_STAMP)  ## unit tests only
	$(BIN)/python -m pytest tests/unit $(ARGS)

lint: $(DEV_STAMP)  ## ruff check + format check + import layers (import-linter: pyproject.toml's contracts)
	$(BIN)/ruff check kdcl tests scripts
	$(BIN)/ruff format --check kdcl tests scripts
	$(BIN)/lint-imports

format: $(DEV_STAMP)  ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix kdcl tests scripts
	$(BIN)/ruff format kdcl tests scripts

fashion-mnist:  ## install Debian's Fashion-MNIST files (needs root or sudo)
	@if [ "$$(id -u)" = 0 ]; then apt-get install -y dataset-fashion-mnist; else sudo apt-get install -y dataset-fashion-mnist; fi

clean:  ## remove the virtual environment and caches (keeps outputs/)
	rm -rf $(VENV) .pytest_cache .ruff_cache .import_linter_cache
