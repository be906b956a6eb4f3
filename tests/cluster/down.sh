#!/usr/bin/env bash
# Stops the control plane started by up.sh (by the PIDs it recorded) and removes its work dir.
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${PYTHON:-$HOME/.cache/modelyard/venv/bin/python}; [ -x "$py" ] || py=python3
exec "$py" -m tests.cluster down "$@"
