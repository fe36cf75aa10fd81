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
	$(BIN)/pytest -q -p no:cacheprovider tests

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

compose-env:  ## .env for docker compose with a generated DRIFTLOOP_ADMIN_TOKEN (mode 600); an existing one is kept.
	@if grep -qs '^DRIFTLOOP_ADMIN_TOKEN=' .env; then echo ".env already has DRIFTLOOP_ADMIN_TOKEN"; else \
	  (umask 077; echo "DRIFTLOOP_ADMIN_TOKEN=$$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')" >> .env) \
	  && echo "wrote DRIFTLOOP_ADMIN_TOKEN to .env (mode 600): docker compose reads it"; fi

bench: setup
	@for f in bench/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf .driftloop .pytest_cache .ruff_cache
