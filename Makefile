# Two commands on a fresh machine: `make run` (a whole fleet on localhost) and `make test`.
# Both create .venv and install what they need by themselves.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip --disable-pip-version-check -q

# Settings pass through from the environment (see README: Settings); these are the common ones.
APPLIANCE_PORT ?= 8080
APPLIANCE_DATA ?= ./data
APPLIANCE_EXECUTORS ?= 2
export APPLIANCE_PORT APPLIANCE_DATA APPLIANCE_EXECUTORS APPLIANCE_API_KEY

.PHONY: run test test-fast bench bench-kernels bench-cache bench-search lint venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python requirements.txt pyproject.toml
	$(PIP) install -r requirements.txt
	$(PIP) install --no-deps -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed requirements-test.txt
	$(PIP) install -r requirements-test.txt
	touch $@

venv: $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/appliance up

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q

test-fast: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -m "not slow"

# Benchmarks write their sections of docs/BENCHMARKS.md (machine, data set and date included).
bench: bench-kernels bench-cache bench-search

bench-kernels: $(VENV)/.installed-test
	$(BIN)/python bench/bench_kernels.py

bench-cache: $(VENV)/.installed-test
	$(BIN)/python bench/bench_cache.py

bench-search: $(VENV)/.installed-test
	$(BIN)/python bench/bench_search.py

lint: $(VENV)/.installed-test
	$(BIN)/ruff check appliance kernels tests

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
