# Two commands on a fresh machine: `make run` (a whole fleet on localhost) and `make test`.
# Both create .venv and install what they need by themselves.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip --disable-pip-version-check -q
CHECKOV_VENV := .venv-checkov
export CHECKOV_BIN ?= $(abspath $(CHECKOV_VENV))/bin/checkov

# Settings pass through from the environment (see README: Settings); these are the common ones.
APPLIANCE_PORT ?= 8080
APPLIANCE_DATA ?= ./data
APPLIANCE_EXECUTORS ?= 2
export APPLIANCE_PORT APPLIANCE_DATA APPLIANCE_EXECUTORS APPLIANCE_API_KEY

.PHONY: run test test-fast bench bench-kernels bench-cache bench-search bench-floor bench-s3 bench-indexer bench-ingest bench-scale lint venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python requirements.txt pyproject.toml
	$(PIP) install -r requirements.txt
	$(PIP) install --no-deps -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed requirements-test.txt $(CHECKOV_VENV)/.installed
	$(PIP) install -r requirements-test.txt
	touch $@

# checkov (the Terraform security scan the tests run) pins versions of boto3 and packaging that conflict with
# the test requirements, so it gets a virtual environment of its own.
$(CHECKOV_VENV)/.installed: requirements-checkov.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip --disable-pip-version-check -q install -r requirements-checkov.txt
	touch $@

venv: $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/appliance up

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q

test-fast: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -m "not slow"

# Benchmarks write their sections of docs/BENCHMARKS.md (machine, data set and date included).
bench: bench-kernels bench-cache bench-search bench-floor bench-s3 bench-indexer bench-ingest

bench-kernels: $(VENV)/.installed-test
	$(BIN)/python bench/bench_kernels.py

bench-indexer: $(VENV)/.installed-test
	$(BIN)/python bench/bench_indexer.py

bench-cache: $(VENV)/.installed-test
	$(BIN)/python bench/bench_cache.py

bench-search: $(VENV)/.installed-test
	$(BIN)/python bench/bench_search.py $(SEARCH_ARGS)  # e.g. SEARCH_ARGS=--quick while developing

# What each layer of a search costs at least (front, hop, scan) beside the real search, on one fleet (~5 min).
bench-floor: $(VENV)/.installed-test
	$(BIN)/python bench/bench_floor.py $(FLOOR_ARGS)  # e.g. FLOOR_ARGS="--rows 5000 --rounds 1 --no-write"

bench-s3: $(VENV)/.installed-test
	$(BIN)/python bench/bench_s3.py

bench-ingest: $(VENV)/.installed-test
	$(BIN)/python bench/bench_ingest.py

# Not part of `make bench`: 100k, 1M and 4M rows (about 8 GB of generated data in ~/.cache/appliance-bench,
# an hour or more). SCALE_ARGS=--quick runs the 100k size only (a few minutes); --sizes 1M adds one size.
bench-scale: $(VENV)/.installed-test
	$(BIN)/python bench/bench_scale.py $(SCALE_ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check appliance kernels tests

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) .pytest_cache .ruff_cache .hypothesis
