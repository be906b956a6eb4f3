#!/usr/bin/env bash
# Starts the test control plane and prints the exports to use it:  eval "$(tests/cluster/up.sh)"
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${PYTHON:-$HOME/.cache/modelyard/venv/bin/python}; [ -x "$py" ] || py=python3
exec "$py" -m tests.cluster up "$@"
