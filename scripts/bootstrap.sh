#!/usr/bin/env bash
# Creates (or reuses) the project's virtualenv outside the clone and prints its path.
# Keyed by the Python version and the dependency declaration, so a warm machine installs nothing.
# --print-path: print where that venv is, change nothing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${MODELYARD_CACHE:-$HOME/.cache/modelyard}
py=${PYTHON:-python3}
key=$( { "$py" -c 'import sys; print(sys.version)'; cat "$root/pyproject.toml" "$root/requirements/constraints.txt"; } | sha256sum | cut -c1-12)
venv="$cache/venv-$key"
if [ "${1:-}" = "--print-path" ]; then
  # Where the venv is (or would be), without creating or re-pointing anything: for scripts that only run it.
  echo "$venv"
  exit 0
fi
if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.complete" ]; then
  echo "bootstrap: creating $venv" >&2
  rm -rf "$venv"
  mkdir -p "$cache"
  "$py" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip >&2
  "$venv/bin/pip" install -q -c "$root/requirements/constraints.txt" -e "$root[server,operator,dev]" >&2
  touch "$venv/.complete"
else
  # The editable install points at whichever clone ran last; re-point it cheaply (no dependency work).
  "$venv/bin/pip" install -q --no-deps -e "$root" >&2
fi
echo "$venv"
