"""`tests/cluster/up.sh` and `down.sh` run in the venv `scripts/bootstrap.sh` creates, wherever the cache
lives."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("command", ["up", "down"])
def test_the_scripts_run_the_cluster_module_with_the_bootstrapped_venvs_python(
    tmp_path: Path, command: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    env["MODELYARD_CACHE"] = str(tmp_path)
    venv = subprocess.run(
        [str(ROOT / "scripts" / "bootstrap.sh"), "--print-path"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    assert Path(venv).parent == tmp_path
    assert not Path(venv).exists()  # --print-path creates nothing
    # A stand-in for the venv's python that reports how it was called.
    python = Path(venv) / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text('#!/bin/sh\necho "venv python $*"\n')
    python.chmod(0o755)
    out = subprocess.run(
        [str(ROOT / "tests" / "cluster" / f"{command}.sh"), "--gpu-nodes", "1"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    assert out.strip() == f"venv python -m tests.cluster {command} --gpu-nodes 1"
