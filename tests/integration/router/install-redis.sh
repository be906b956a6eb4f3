#!/usr/bin/env bash
# Installs the real store the router's shared-limits tests run against: Debian's `redis-server`.
# Idempotent: does nothing when it is already on PATH. The package's service is never used (tests start
# /usr/bin/redis-server on a loopback port of their own, without persistence).
set -euo pipefail
if command -v redis-server >/dev/null; then
  exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends redis-server >/dev/null
redis-server --version
