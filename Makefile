# driftloop — two commands for a fresh machine:  `make demo`  and  `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export SPARK_LOCAL_IP := 127.0.0.1
export PYSPARK_PYTHON := $(abspath $(BIN)/python)
export PYSPARK_DRIVER_PYTHON := $(abspath $(BIN)/python)
export RAY_USAGE_STATS_ENABLED := 0
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0

.PHONY: setup demo test test-unit test-integration test-e2e lint format up down status bench clean compose-env

setup: $(STAMP)  ## Create .venv and install everything, pinned (requirements.lock).

$(STAMP): pyproject.toml requirements.lock infra/setup-system.sh
	bash infra/setup-system.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==25.3
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/pip check
	touch $(STAMP)

demo: setup  ## Run the closed-loop demo on the embedded stack, then stop everything.
	$(BIN)/driftloop demo

test: setup lint  ## Unit, integration and end-to-end tests (real broker, PostgreSQL, S3, Spark, Ray).
	$(BIN)/pytest -q -p no:cacheprovider --durations=30 -n 2 --dist loadfile --no-loadscope-reorder tests

test-unit: setup
	$(BIN)/pytest -q tests/unit

test-integration: setup
	$(BIN)/pytest -q tests/integration

test-e2e: setup
	$(BIN)/pytest -q tests/e2e

lint: setup  ## ruff (lint + format) and mypy on the package and its services.
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy libs/driftloop services

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

up: setup
	$(BIN)/driftloop up

down:
	$(BIN)/driftloop down

status:
	$(BIN)/driftloop status

compose-env:  ## .env for docker compose: generated DRIFTLOOP_ADMIN_TOKEN and DRIFTLOOP_KAFKA_PASSWORD (mode 600); existing ones kept.
	@for name in DRIFTLOOP_ADMIN_TOKEN DRIFTLOOP_KAFKA_PASSWORD; do \
	  if grep -qs "^$$name=" .env; then echo ".env already has $$name"; else \
	  (umask 077; echo "$$name=$$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')" >> .env) \
	  && echo "wrote $$name to .env (mode 600): docker compose reads it"; fi; done

bench: setup
	@for f in bench/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf .driftloop .pytest_cache .ruff_cache
