# The two commands a new user needs:
#   make local   - tiny model built on the spot, model server + router on 127.0.0.1, no cluster
#   make test    - everything CI runs: lint, unit tests, then integration tests on a real control plane
SHELL := /bin/bash
.ONESHELL:
.SHELLFLAGS := -euo pipefail -c
VENV = $(shell scripts/bootstrap.sh)
PY = $(VENV)/bin/python

.PHONY: local test lint unit integration cluster-bins

local:
	venv=$(VENV); exec "$$venv/bin/modelyard-local"

test:
	venv=$(VENV); export PATH="$$venv/bin:$$PATH"
	tests/run-all.sh

lint:
	venv=$(VENV); export PATH="$$venv/bin:$$PATH"
	ruff check .
	ruff format --check .
	mypy
	lint-imports
