"""Router settings: env and flags, one typed place."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from modelyard.api import metadata
from modelyard.router.settings import DiscoveryMode, RouterSettings


def test_defaults_are_kubernetes_mode_on_the_contract_port(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in [v for v in os.environ if v.startswith("MODELYARD_ROUTER_")]:
        monkeypatch.delenv(var)
    s = RouterSettings(_cli_parse_args=[])  # type: ignore[call-arg]
    assert s.mode is DiscoveryMode.KUBERNETES
    assert s.port == metadata.ROUTER_PORT == 8080


def test_env_and_kebab_case_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELYARD_ROUTER_HOLD_MAX_WAIT_S", "2.5")
    monkeypatch.setenv("MODELYARD_ROUTER_MAX_RETRIES", "1")
    s = RouterSettings(_cli_parse_args=["--static-config", "/tmp/m.yaml", "--max-retries", "4"])  # type: ignore[call-arg]
    assert s.hold_max_wait_s == 2.5
    assert s.max_retries == 4  # flags win over env
    assert s.static_config == Path("/tmp/m.yaml")
    assert s.mode is DiscoveryMode.STATIC  # implied by the file


def test_static_mode_without_a_file_is_rejected() -> None:
    with pytest.raises(ValidationError, match="static_config"):
        RouterSettings(_cli_parse_args=["--mode", "static"])  # type: ignore[call-arg]


def test_nonsense_values_are_rejected() -> None:
    with pytest.raises(ValidationError):
        RouterSettings(_cli_parse_args=["--max-body-bytes", "0"])  # type: ignore[call-arg]


def test_workers_with_api_keys_need_the_store() -> None:
    base: dict[str, object] = {"_cli_parse_args": [], "static_config": "/m.yaml", "workers": 2}
    RouterSettings(**base)  # type: ignore[arg-type]  # no keys: nothing to share
    RouterSettings(**base, api_keys_file="/k.yaml", store_url="redis://s:6379/0")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="needs store_url"):
        RouterSettings(**base, api_keys_secret="keys")  # type: ignore[arg-type]
