# support — the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
BIN := $(VENV)/bin
SDK := $(TOOLS)/sdk
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON := $(PYTHON)

.PHONY: help install sdk-tools run test lint fmt pytest test-fast clean

help: ## Show the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(UV): .ci/uv-requirements.txt
	@echo "==> installing uv (pinned, hash-checked) into $(TOOLS)/"
	@$(PYTHON) -m venv $(TOOLS)
	@$(TOOLS)/bin/pip install --quiet --disable-pip-version-check --require-hashes -r .ci/uv-requirements.txt
	@touch $(UV)

$(VENV)/.installed: $(UV) pyproject.toml uv.lock
	@echo "==> creating $(VENV)/ from uv.lock"
	@$(UV) sync --frozen --all-extras --all-groups --quiet
	@touch $@

install: $(VENV)/.installed ## Create the environment from the lock file

# The OpenAPI client generator, apart from the project's environment (tests/api/test_generated_client.py).
$(SDK)/.installed: $(UV) .ci/sdk-requirements.txt
	@echo "==> creating $(SDK)/ (openapi-python-client, pinned and hash-checked)"
	@$(UV) venv --quiet --allow-existing $(SDK)
	@$(UV) pip install --quiet --require-hashes --python $(SDK)/bin/python -r .ci/sdk-requirements.txt
	@touch $@

sdk-tools: $(SDK)/.installed ## Install the OpenAPI client generator into .tools/sdk (docs/api.md)

run: install ## Start PostgreSQL, Valkey and the API on http://127.0.0.1:8000 (Ctrl-C stops everything)
	@$(BIN)/support serve --sample-data

test: install lint pytest ## Lint (ruff, mypy --strict, import-linter) and run the whole suite on real servers

lint: install ## ruff, mypy --strict, import-linter
	@echo "==> ruff"
	@$(BIN)/ruff format --check --quiet src tests bench migrations
	@$(BIN)/ruff check --quiet src tests bench migrations
	@echo "==> mypy --strict"
	@$(BIN)/mypy --no-error-summary
	@echo "==> import-linter"
	@$(BIN)/lint-imports --no-cache | tail -n 2

pytest: install sdk-tools ## The test suite (embedded servers start automatically)
	@echo "==> pytest"
	@SUPPORT_TEST_SDK_REQUIRED=1 $(BIN)/pytest

test-fast: install ## Tests that need no server
	@$(BIN)/pytest -m "not postgres and not valkey and not slow"

fmt: install ## Format and autofix
	@$(BIN)/ruff format src tests bench migrations
	@$(BIN)/ruff check --fix src tests bench migrations

clean: ## Remove the environment and local data
	rm -rf $(VENV) $(TOOLS) .data .pytest_cache .mypy_cache .ruff_cache
