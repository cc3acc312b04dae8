# zhiva local PACS. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: help up down status logs admin setup test test-containers lint compose system-packages-test bench

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

up: $(VENV)/.runtime setup ## set up what is missing, start the stack (MODE=native|docker), print its URLs
	@$(BIN)/python -m infra.stack up

down: $(VENV)/.runtime ## stop every process of the stack (data stays)
	@$(BIN)/python -m infra.stack down

status: $(VENV)/.runtime ## one line per component: up/down and its address
	@$(BIN)/python -m infra.stack status

logs: $(VENV)/.runtime ## where the logs are, and their tails
	@$(BIN)/python -m infra.stack logs

admin: $(VENV)/.runtime ## manage users on the running stack: make admin ARGS="list-users"
	@$(BIN)/python -m infra.stack admin $(ARGS)

setup: $(VENV)/.runtime ## make the TLS certificate, JWT keys and .env when missing (asks the admin password)
	@$(BIN)/python -m infra.setup

# Two processes, one test file each at a time (a file's module fixtures, its stacks, stay
# in one process): the suite waits on stacks, browsers and timeouts more than on the CPU.
TEST_WORKERS ?= 2

test: system-packages-test lint ## lint, then the whole test suite, real components included (CONTAINERS=1: the container stack too)
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile
	@if [ "$(CONTAINERS)" = 1 ]; then $(MAKE) --no-print-directory test-containers; fi

test-containers: $(VENV)/.test ## build the images, boot docker-compose.yml (Podman or Docker), run the end-to-end tests on it
	@infra/install-system-packages.sh --containers
	$(BIN)/pytest --stack=containers

bench: system-packages-test $(VENV)/.test ## measure what the security layer costs; rewrites docs/BENCHMARKS.md (several minutes)
	@$(BIN)/pip install -q --disable-pip-version-check -e '.[test,bench]'
	$(BIN)/python -m bench

lint: $(VENV)/.test ## ruff (lint and format) and mypy on the code
	$(BIN)/ruff check services infra tests bench
	$(BIN)/ruff format --check services infra tests bench
	$(BIN)/mypy

compose: $(VENV)/.runtime ## render docker-compose.yml from the settings templates
	@$(BIN)/python -m infra.render compose

system-packages-test:
	@infra/install-system-packages.sh --test

# The virtual environment is rebuilt when pyproject.toml changes.
$(VENV)/.runtime: pyproject.toml
	@test -x $(BIN)/python || { echo "creating $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@echo "installing the Python packages into $(VENV)"
	@$(BIN)/pip install -q --disable-pip-version-check -e .
	@touch $@

$(VENV)/.test: $(VENV)/.runtime
	@echo "installing the test packages into $(VENV)"
	@$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@
