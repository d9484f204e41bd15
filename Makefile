# Shop: everything from a fresh clone with only python3 on PATH.
#   make run     migrate the embedded databases and run the whole shop in one process
#   make test    lint, type-check, import contracts, then the test suite
#   make test-deep  the property tests with the deep profile (thousands of programs; long)
#   make split   the split deployment on this machine: Redis, five services (catalog twice), gateway
#   make lint    ruff + mypy + import contracts only
#   make contracts-snapshot  record a compatible change of a published message (tests/contracts)
#   make bench   benchmarks (bench/run.sh) if there are any
#   make clean   caches and build output;  make distclean  also .venv and var/ (dev databases)
# The virtualenv is built from the committed lock (uv.lock) and rebuilt when it or
# pyproject.toml changes. uv uses its default cache (set UV_CACHE_DIR to move it).

SHELL := /bin/bash
# Byte-code caches on: with PYTHONDONTWRITEBYTECODE set (as on the CI machine) every process the
# tests start would compile the whole import graph again (measured: 5.2 s vs 1.8 s per import).
unexport PYTHONDONTWRITEBYTECODE
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

# Python 3.11, 3.12 or 3.13 (requires-python); e.g. `make test PYTHON=python3.13` in a fresh clone
# (the virtualenv is made once: `make distclean` first to change it).
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
UV_VERSION := 0.13.8
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
RUN_ARGS ?=

.PHONY: help install run split test test-deep lint typecheck imports pytest format bench clean distclean \
	contracts-snapshot

help:
	@sed -n 's/^#   //p' $(MAKEFILE_LIST)

$(STAMP): uv.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv==$(UV_VERSION)
	$(BIN)/uv sync --frozen --all-extras --inexact
	@# Compile the dependencies once, so that parallel processes do not each compile them;
	@# a file that does not compile (a template in some package) is not an error here.
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	touch $@

install: $(STAMP)

run: $(STAMP)
	$(BIN)/shop migrate
	$(BIN)/shop run $(RUN_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests migrations
	$(BIN)/mypy
	$(BIN)/lint-imports --no-logo importlinter.ini

typecheck: $(STAMP)
	$(BIN)/mypy

imports: $(STAMP)
	$(BIN)/lint-imports --no-logo importlinter.ini

pytest: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint pytest

# SHOP_PROPERTY_SEED=<seed> replays a failing run's programs.
test-deep: $(STAMP)
	SHOP_PROPERTY_PROFILE=deep $(BIN)/pytest tests/property -o timeout=0 -s $(PYTEST_ARGS)

contracts-snapshot: $(STAMP)
	$(BIN)/python -m tests.contracts.snapshot --write

format: $(STAMP)
	$(BIN)/ruff format src tests migrations
	$(BIN)/ruff check --fix src tests migrations

bench: $(STAMP)
	@if [ -x bench/run.sh ]; then bench/run.sh; \
	elif [ -f bench/run.sh ]; then bash bench/run.sh; \
	else echo "no benchmarks yet (bench/run.sh)"; fi

clean:
	rm -rf .mypy_cache .ruff_cache .pytest_cache .hypothesis .import_linter_cache dist build
	find . -path ./$(VENV) -prune -o \( -name __pycache__ -o -name '*.egg-info' \) -print0 \
		| xargs -0 rm -rf

distclean: clean
	rm -rf $(VENV) var

split: $(STAMP)
	scripts/split.sh
