#!/usr/bin/env bash
# Installs what the dashboard and alert tests need: Prometheus and promtool from Debian's `prometheus`
# package. Idempotent: does nothing when both are already on PATH. The package's service is never used
# (tests run /usr/bin/prometheus with their own config on a loopback port); where systemd is absent the
# postinst cannot start it either.
set -euo pipefail
if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
  exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
prometheus --version | head -1
promtool --version | head -1
