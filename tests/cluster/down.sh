#!/usr/bin/env bash
# Stops the control plane started by up.sh (by the PIDs it recorded) and removes its work dir.
# Runs in the project venv that scripts/bootstrap.sh creates, else $PYTHON or python3.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=$(scripts/bootstrap.sh --print-path)
py=${PYTHON:-$venv/bin/python}; [ -x "$py" ] || py=python3
exec "$py" -m tests.cluster down "$@"
