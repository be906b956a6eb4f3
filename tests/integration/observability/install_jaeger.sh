#!/usr/bin/env bash
# Builds (or reuses) Jaeger from its Go module (github.com/jaegertracing/jaeger v1.75.0), through the Go
# module proxy, into a cache outside the clone, and prints the binary's path (last line of stdout).
# The trace tests send OTLP to it and read traces back from its query API.
set -euo pipefail
VERSION=v1.75.0
cache=${MODELYARD_CACHE:-$HOME/.cache/modelyard}
out="$cache/jaeger/$VERSION"
bin="$out/jaeger"
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
mkdir -p "$out"
exec 9>"$out/.lock"
flock 9
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false" GOMODCACHE="$cache/gomod"
export GOMAXPROCS=${GOMAXPROCS:-2}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
go mod init modelyard-jaeger-build >/dev/null 2>&1
go get -tool "github.com/jaegertracing/jaeger/cmd/jaeger@$VERSION" >&2
go build -o "$bin.tmp" github.com/jaegertracing/jaeger/cmd/jaeger >&2
mv "$bin.tmp" "$bin"
echo "$bin"
