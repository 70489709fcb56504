# Two commands on a fresh Debian machine:
#   make up     set everything up, then run the pipeline locally with simulated traffic
#               (Kafka, Redis, PostgreSQL, Prometheus, worker, sync, gateway, demo)
#   make test   set everything up, then run the whole test suite on real services
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: setup up worker test unit lint typecheck bench clean

setup: $(VENV)/.installed
	bash infra/setup.sh

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "[setup] $(PYTHON) not found: install Python 3.11+"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { \
	  echo "[setup] cannot create a virtualenv: run 'bash infra/setup.sh' (installs python3-venv) and retry"; exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

up: setup
	$(BIN)/dnc up --demo

test: setup
	$(BIN)/pytest

unit: $(VENV)/.installed
	$(BIN)/pytest -m "not pipeline and not kafka and not redis"

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed
	$(BIN)/mypy

bench: setup
	$(BIN)/dnc bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
