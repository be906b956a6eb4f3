#!/usr/bin/env bash
# Fetches (or reuses) the Gateway API and inference-extension CRDs from their Go modules, through the Go
# module proxy, into a cache outside the clone, and prints the directory holding the CRD files.
# Only the last line of stdout is the path.
set -euo pipefail

GATEWAY_API=sigs.k8s.io/gateway-api@v1.6.3
INFERENCE_EXTENSION=sigs.k8s.io/gateway-api-inference-extension@v1.6.2

cache=${MODELYARD_CACHE:-$HOME/.cache/modelyard}
out="$cache/gateway-crds/gateway-api-v1.6.3_gie-v1.6.2"
want=(inference.networking.k8s.io_inferencepools.yaml gateway.networking.k8s.io_httproutes.yaml
      gateway.networking.k8s.io_gateways.yaml gateway.networking.k8s.io_gatewayclasses.yaml)

complete() { local f; for f in "${want[@]}"; do [ -s "$out/$f" ] || return 1; done; }
if complete; then echo "$out"; exit 0; fi
mkdir -p "$out"
exec 9>"$out/.lock"
flock 9
if complete; then echo "$out"; exit 0; fi

export GOTOOLCHAIN=local GOFLAGS=-mod=mod GOMODCACHE="$cache/gomod"
dir_of() { (cd / && go mod download -json "$1") | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])'; }
gie=$(dir_of "$INFERENCE_EXTENSION")
gw=$(dir_of "$GATEWAY_API")
cp "$gie/config/crd/bases/inference.networking.k8s.io_inferencepools.yaml" "$out/"
for f in httproutes gateways gatewayclasses referencegrants; do
  cp "$gw/config/crd/standard/gateway.networking.k8s.io_$f.yaml" "$out/"
done
chmod u+w "$out"/*.yaml
echo "$out"
