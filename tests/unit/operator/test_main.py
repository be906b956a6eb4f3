"""The command line and the environment map onto one OperatorSettings, read once."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from modelyard.api.llmmodel import Engine
from modelyard.operator.settings import parse_settings


def test_namespaced_flags() -> None:
    s = parse_settings(["-n", "a", "--namespace", "b", "--metrics-port", "9100"])
    assert s.namespaces == ["a", "b"]
    assert s.metrics_port == 9100


def test_cluster_wide_and_peering() -> None:
    s = parse_settings(["-A", "--peering", "modelyard", "--priority", "7"])
    assert s.namespaces == []
    assert s.all_namespaces
    assert (s.peering_name, s.priority) == ("modelyard", 7)


def test_namespace_and_all_namespaces_are_exclusive() -> None:
    with pytest.raises(ValidationError, match="exclusive"):
        parse_settings(["-A", "-n", "x"])


def test_kubeconfig_verbose_and_images_from_flags() -> None:
    s = parse_settings(["--kubeconfig", "/tmp/kc", "-v", "--server-image", "a/s:1", "--vllm-image", "v/v:2"])
    assert s.kubeconfig == Path("/tmp/kc")
    assert s.verbose
    assert s.engine_image(Engine.MODELYARD) == "a/s:1"
    assert s.engine_image(Engine.VLLM) == "v/v:2"
    assert s.engine_image(Engine.SGLANG) == "lmsysorg/sglang:v0.5.6"


def test_environment_configures_defaults_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELYARD_OPERATOR_SERVER_IMAGE", "example/server:9")
    monkeypatch.setenv("MODELYARD_OPERATOR_SGLANG_IMAGE", "example/sglang:9")
    monkeypatch.setenv("MODELYARD_OPERATOR_NAMESPACES", '["x"]')
    monkeypatch.setenv("MODELYARD_OPERATOR_METRICS_PORT", "9191")
    s = parse_settings(["--metrics-port", "9292"])
    assert s.server_image == "example/server:9"
    assert s.engine_image(Engine.SGLANG) == "example/sglang:9"
    assert s.namespaces == ["x"]
    assert s.metrics_port == 9292


def test_unknown_flag_exits() -> None:
    with pytest.raises(SystemExit):
        parse_settings(["--no-such-flag"])
