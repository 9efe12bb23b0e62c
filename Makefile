# Two commands on a fresh machine: `make demo` (the local stack with sample orders) and
# `make test` (the whole suite). Both create the virtual environment on first use, with every
# package at the version pinned in constraints.txt (`make lock` regenerates it).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONSTRAINTS := constraints.txt
PIP_TOOLS := pip-tools==7.6.2

.PHONY: venv demo test lint typecheck down clean bench lock

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e '.[dev,embedded,bench]'
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

# Regenerates constraints.txt from pyproject.toml in a throwaway virtualenv (pip-compile): every
# package `venv` installs, transitive ones included, pinned with ==. Existing pins are kept where
# pyproject still allows them; LOCK_ARGS=--upgrade moves everything to the newest release,
# LOCK_ARGS='--upgrade-package aiohttp' one package. Commit the result with the change that needs it.
lock:
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT \
	  && $(PYTHON) -m venv "$$tmp" \
	  && "$$tmp/bin/python" -m pip install --quiet '$(PIP_TOOLS)' \
	  && CUSTOM_COMPILE_COMMAND='make lock' "$$tmp/bin/pip-compile" --quiet --strip-extras \
	    --allow-unsafe --extra dev --extra embedded --extra bench \
	    --no-emit-index-url --no-emit-find-links \
	    $(LOCK_ARGS) --output-file $(CONSTRAINTS) pyproject.toml

clean:
	rm -rf $(VENV) .state *.egg-info
