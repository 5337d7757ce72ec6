# The two commands of the README: `make demo` and `make test`. Everything else is a step of those.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
export PYTHON

.PHONY: venv services services-stop services-status migrate test test-unit demo bench lint clean

$(INSTALLED): pyproject.toml
	@$(PY) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
	  || { echo "error: Python 3.11+ is required ($(PY) is $$($(PY) --version 2>&1))" >&2; exit 1; }
	@test -x $(PYTHON) || $(PY) -m venv $(VENV)
	@echo "==> installing Python dependencies into $(VENV)"
	@$(PYTHON) -m pip install -q --disable-pip-version-check -e '.[dev]' \
	  || { echo "error: pip install failed (is PyPI reachable?)" >&2; exit 1; }
	@touch $@

venv: $(INSTALLED)

services: venv
	@ops/kafka/kafka.sh start
	@ops/postgres/postgres.sh start

services-stop:
	@ops/kafka/kafka.sh stop
	@ops/postgres/postgres.sh stop

services-status:
	@ops/kafka/kafka.sh status || true
	@ops/postgres/postgres.sh status || true

migrate: services
	@$(VENV)/bin/campaigns migrate

test: services lint
	@$(PYTHON) -m pytest $(PYTEST_ARGS)

test-unit: venv
	@$(PYTHON) -m pytest tests/unit $(PYTEST_ARGS)

demo: services
	@$(VENV)/bin/campaigns demo $(DEMO_ARGS)

# The baselines' own needs: the bench extra (BullMQ, redis-py) here, and redis-server from the OS packages
# (ops/redis/redis.sh, run by --install-missing when the BullMQ baseline is chosen; the harness starts its
# own on a free port). Whatever is still missing stops the harness before it runs anything.
bench: services
	@$(PYTHON) -m pip install -q --disable-pip-version-check -e '.[dev,bench]'
	@$(VENV)/bin/campaigns bench --install-missing $(BENCH_ARGS)

lint: venv
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/mypy campaigns/core
	@$(VENV)/bin/lint-imports --no-cache

clean: services-stop
	rm -rf .state
