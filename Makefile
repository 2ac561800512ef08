# One command for every check, the same locally and in CI.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint bench stress setup clean

# The venv is rebuilt only when the project's dependencies change.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

# Docker engine (installed and started if needed), gVisor, base image and runtime image.
setup: $(STAMP)
	$(BIN)/agentbox doctor --fix --runsc --browser

test: setup
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/mypy --explicit-package-bases --allow-untyped-defs tests

run: setup
	$(BIN)/agentbox demo

bench: setup
	$(BIN)/python bench/run.py

# 20 sandboxes x 100 commands at once: errors, latency under load, leftovers (same table as bench).
stress: setup
	$(BIN)/python bench/run.py --only stress

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
