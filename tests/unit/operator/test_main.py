"""The command line maps onto OperatorSettings."""

from __future__ import annotations

import pytest

from modelyard.operator.__main__ import build_settings, parse_args


def test_namespaced_flags() -> None:
    s = build_settings(parse_args(["-n", "a", "--namespace", "b", "--metrics-port", "9100"]))
    assert s.namespaces == ["a", "b"]
    assert s.metrics_port == 9100


def test_cluster_wide_and_peering() -> None:
    s = build_settings(parse_args(["-A", "--peering", "modelyard", "--priority", "7"]))
    assert s.namespaces == []
    assert (s.peering_name, s.priority) == ("modelyard", 7)


def test_namespace_and_all_namespaces_are_exclusive() -> None:
    with pytest.raises(SystemExit):
        parse_args(["-A", "-n", "x"])


def test_environment_configures_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELYARD_OPERATOR_SERVER_IMAGE", "example/server:9")
    monkeypatch.setenv("MODELYARD_OPERATOR_NAMESPACES", '["x"]')
    s = build_settings(parse_args([]))
    assert s.server_image == "example/server:9"
    assert s.namespaces == ["x"]
