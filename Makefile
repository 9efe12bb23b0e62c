# Two commands on a fresh machine: `make demo` (the local stack with sample orders) and
# `make test` (the whole suite). Both create the virtual environment on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint typecheck down clean bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,embedded,bench]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/ordersaga demo

down: $(STAMP)
	$(BIN)/ordersaga dev down

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy core activities brokersim workflows worker feeds ordersaga devstack chaos bench cli
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q -rs -p no:cacheprovider

# The four benchmarks one after another (about 20 minutes on 2 cores); figures in docs/PERFORMANCE.md.
bench: $(STAMP)
	$(BIN)/python -m bench.throughput
	$(BIN)/python -m bench.isolation
	$(BIN)/python -m bench.contention
	$(BIN)/python -m bench.claims

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check --exclude '*.md' .

typecheck: $(STAMP)
	$(BIN)/mypy core activities brokersim workflows worker feeds ordersaga devstack chaos bench cli

clean:
	rm -rf $(VENV) .state *.egg-info
