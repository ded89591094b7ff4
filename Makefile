# The two-command promise: `make demo` and `make test` each set everything up from a fresh clone.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint dagster bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/syncline demo

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

dagster: install
	$(BIN)/syncline ui --port 3000

bench: install
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python benchmarks/bench_compare.py --events 1000000 --out docs/performance-compare.md
	$(BIN)/python benchmarks/bench_memory.py --events 1000000 10000000
	$(BIN)/python benchmarks/bench_transport.py --events 300000

clean:
	rm -rf $(VENV) .syncline .pytest_cache .mypy_cache .ruff_cache
