# Two commands on a fresh Debian machine:
#   make up     set everything up, then run the pipeline locally with simulated traffic
#               (Kafka, Redis, PostgreSQL, Prometheus, worker, sync, gateway, demo)
#   make test   set everything up, then run the whole test suite on real services
#
# Python packages come only from uv.lock (exact versions and hashes, every transitive
# dependency, the build backend included): `uv sync --frozen` never resolves anything.
# uv itself is installed from infra/uv.txt (one pinned version, hashes checked by pip).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
TOOLS := .tools
UV := $(TOOLS)/bin/uv
export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_PYTHON_DOWNLOADS := never

.PHONY: setup system up worker test unit lint typecheck bench clean lock lock-check

setup: system $(VENV)/.installed

# Debian packages (Java 17, Redis, PostgreSQL, Prometheus, python3-venv) and the Kafka jars.
system:
	bash infra/setup.sh

$(UV): infra/uv.txt
	@command -v $(PYTHON) >/dev/null || { echo "[setup] $(PYTHON) not found: install Python 3.11+"; exit 1; }
	@test -x $(TOOLS)/bin/python || $(PYTHON) -m venv $(TOOLS) || { \
	  echo "[setup] cannot create a virtualenv: run 'bash infra/setup.sh' (installs python3-venv) and retry"; exit 1; }
	$(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes -r infra/uv.txt
	touch $@

lock-check: $(UV)
	@$(UV) lock --check --python $(PYTHON) --quiet || { \
	  echo "[setup] ERROR: uv.lock does not match pyproject.toml. Run 'make lock' and commit uv.lock."; exit 1; }

$(VENV)/.installed: pyproject.toml uv.lock $(UV)
	@$(MAKE) --no-print-directory lock-check
	$(UV) sync --frozen --extra dev --group build --no-install-project --python $(PYTHON) --quiet --compile-bytecode
	$(UV) pip install --python $(BIN)/python --no-deps --no-build-isolation --quiet -e .
	@# Bytecode ahead of time: where PYTHONDONTWRITEBYTECODE is set, every process would
	@# otherwise compile everything it imports at each start (0.4 s of a `dnc check`).
	$(BIN)/python -m compileall -q dnc schemas producers streams consumers infra
	touch $@

# Refresh the lock (newest versions within pyproject.toml's ranges); commit the result.
lock: $(UV)
	$(UV) lock --upgrade --python $(PYTHON)

up: setup
	$(BIN)/dnc up --demo

# Two processes, each with its own services, a test module at a time (the fault drills take
# most of the time; the rest runs beside them).
test: setup
	$(BIN)/pytest -n 2 --dist loadfile

unit: $(VENV)/.installed
	$(BIN)/pytest -m "not pipeline and not kafka and not redis and not postgres and not prometheus"

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed
	$(BIN)/mypy

bench: setup
	$(BIN)/dnc bench

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache .hypothesis
