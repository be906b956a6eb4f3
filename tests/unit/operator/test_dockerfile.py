"""Dockerfile.operator runs the same command the tests run."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = ROOT / "Dockerfile.operator"


def test_entrypoint_is_the_console_script_and_user_is_not_root() -> None:
    text = DOCKERFILE.read_text()
    assert 'ENTRYPOINT ["modelyard-operator"]' in text
    assert "USER 1000" in text or "USER 1000:1000" in text
    assert ".[operator]" in text
    instructions = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not any("torch" in line for line in instructions)
