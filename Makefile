# Every target sets itself up: a fresh Debian/Ubuntu machine with Python 3.11+ needs nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test lint format bench-decode bench-load bench-copy clean

$(STAMP): pyproject.toml setup.py cdc_assets/commitlog/_mutation_accel.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/cdc-assets demo --cdc-raw var/cdc_raw

lint: $(STAMP)
	$(BIN)/ruff check cdc_assets cdc_assets_tests benchmarks
	$(BIN)/ruff format --check cdc_assets cdc_assets_tests benchmarks

format: $(STAMP)
	$(BIN)/ruff check --fix cdc_assets cdc_assets_tests benchmarks
	$(BIN)/ruff format cdc_assets cdc_assets_tests benchmarks

test: lint
	scripts/ensure-postgres.sh
	$(BIN)/pytest -q

bench-decode: $(STAMP)
	$(BIN)/python benchmarks/bench_decode.py

bench-load: $(STAMP)
	$(BIN)/python benchmarks/bench_load.py

bench-copy: $(STAMP)
	$(BIN)/python benchmarks/bench_pg_binary.py

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache .hypothesis
