#!/usr/bin/env bash
# Starts the test control plane and prints the exports to use it:  eval "$(tests/cluster/up.sh)"
# Runs in the project venv that scripts/bootstrap.sh creates (`make test` does), else $PYTHON or python3.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=$(scripts/bootstrap.sh --print-path)
py=${PYTHON:-$venv/bin/python}; [ -x "$py" ] || py=python3
exec "$py" -m tests.cluster up "$@"
