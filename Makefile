# Every target sets itself up: a fresh Debian/Ubuntu machine with Python 3.11+ needs nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The Dagster webserver's port for `make run` (make run PORT=3001).
PORT ?= 3000

.PHONY: install run cassandra test lint format bench-decode bench-load bench-read bench-copy bench-e2e clean

$(STAMP): pyproject.toml setup.py cdc_assets/commitlog/_mutation_accel.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/cdc-assets run --port $(PORT)

# A real Cassandra 5.0 node with CDC on until Ctrl-C (Java 17 and Maven):
# make cassandra ARGS="--storage-compatibility-mode NONE --commitlog-compression LZ4Compressor --encryption"
cassandra: $(STAMP)
	$(BIN)/cdc-assets cassandra $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check cdc_assets cdc_assets_tests benchmarks
	$(BIN)/ruff format --check cdc_assets cdc_assets_tests benchmarks

format: $(STAMP)
	$(BIN)/ruff check --fix cdc_assets cdc_assets_tests benchmarks
	$(BIN)/ruff format cdc_assets cdc_assets_tests benchmarks

test: lint
	scripts/ensure-postgres.sh
	scripts/ensure-cassandra.sh $(BIN)/python
	$(BIN)/pytest -q

bench-decode: $(STAMP)
	$(BIN)/python benchmarks/bench_decode.py

bench-load: $(STAMP)
	$(BIN)/python benchmarks/bench_load.py

# make bench-read ARGS="--changes 200000 --loads 10 --repeat 5 --destinations postgres,clickhouse"
bench-read: $(STAMP)
	$(BIN)/python benchmarks/bench_read.py $(ARGS)

bench-copy: $(STAMP)
	$(BIN)/python benchmarks/bench_pg_binary.py

# make bench-e2e ARGS="--rate 20000 --seconds 180" (benchmarks/bench_e2e.py --help lists the options)
bench-e2e: $(STAMP)
	$(BIN)/python benchmarks/bench_e2e.py $(ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache .hypothesis
