"""Runs ``helm template`` / ``helm lint`` on the chart and parses what comes out."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from tests.unit.chart.tools import CHART_DIR, REPO_ROOT, helm_path

CI_VALUES = sorted((CHART_DIR / "ci").glob("*-values.yaml"))
EXAMPLES = sorted((REPO_ROOT / "examples").glob("*.yaml"))
RELEASE = "my"
NAMESPACE = "modelyard-system"


def _env() -> dict[str, str]:
    # Keep helm's config/cache out of the user's home and away from other sessions.
    home = Path(tempfile.gettempdir()) / f"modelyard-helm-home-{os.getuid()}"
    env = dict(os.environ)
    for var, sub in (
        ("HELM_CACHE_HOME", "cache"),
        ("HELM_CONFIG_HOME", "config"),
        ("HELM_DATA_HOME", "data"),
    ):
        env[var] = str(home / sub)
    return env


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [helm_path(), *args], capture_output=True, text=True, env=_env(), timeout=120, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def template_args(values_files: Iterable[Path] = (), sets: Iterable[str] = ()) -> list[str]:
    args = ["template", RELEASE, str(CHART_DIR), "--namespace", NAMESPACE]
    for f in values_files:
        args += ["-f", str(f)]
    for s in sets:
        args += ["--set", s]
    return args


@lru_cache(maxsize=64)
def _render(values_files: tuple[Path, ...], sets: tuple[str, ...]) -> tuple[str, ...]:
    out = helm(*template_args(values_files, sets)).stdout
    return tuple(yaml.safe_dump(d) for d in yaml.safe_load_all(out) if d)


def render(*sets: str, values: Iterable[Path] = ()) -> list[dict[str, Any]]:
    """Rendered manifests (fresh copies) for these values files and ``--set`` expressions."""
    return [yaml.safe_load(d) for d in _render(tuple(values), tuple(sets))]


def render_error(*sets: str, values: Iterable[Path] = ()) -> str:
    """helm's error output for values that must be rejected (fails the test when they are accepted)."""
    proc = helm(*template_args(values, sets), check=False)
    assert proc.returncode != 0, (
        f"expected helm to reject {sets or values}, it rendered:\n{proc.stdout[:500]}"
    )
    return proc.stderr


def find(docs: list[dict[str, Any]], kind: str, name_suffix: str = "") -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]


def one(docs: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    found = find(docs, kind, name_suffix)
    assert len(found) == 1, (
        f"expected one {kind} *{name_suffix}, got {[d['metadata']['name'] for d in found]}"
    )
    return found[0]


def env_of(deployment: dict[str, Any]) -> dict[str, str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}
