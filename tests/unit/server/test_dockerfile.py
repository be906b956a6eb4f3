"""Dockerfile.server runs the console script the tests start."""

from __future__ import annotations

import re
from pathlib import Path

from modelyard.server.settings import parse_settings

ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = ROOT / "Dockerfile.server"


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
