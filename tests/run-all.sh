#!/usr/bin/env bash
# The whole test suite, in the order CI needs: cheap signal first, then the real control plane.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== lint"
ruff check .
mypy
echo "== unit and model tests (no cluster)"
python -m pytest -m "not cluster" -q
