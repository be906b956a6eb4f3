"""Pure parts of discovery: static files, LLMModel + EndpointSlice joins, readiness."""

from __future__ import annotations

import pytest

from modelyard.api import metadata
from modelyard.router.discovery.specs import build_specs, model_spec_from_llmmodel, ready_urls
from modelyard.router.discovery.static import parse_static
from modelyard.router.table import Strategy


def test_static_file_long_and_short_forms() -> None:
    specs = parse_static(
        """
models:
  tiny:
    urls: ["http://127.0.0.1:8001/", "http://127.0.0.1:8002"]
    aliases: [t]
    strategy: PrefixHash
    prefixCharLength: 50
  embed: http://127.0.0.1:8003
  two: [http://127.0.0.1:8004, http://127.0.0.1:8005]
"""
    )
    by_name = {s.name: s for s in specs}
    assert by_name["tiny"].endpoints == ("http://127.0.0.1:8001", "http://127.0.0.1:8002")
    assert by_name["tiny"].aliases == ("t",)
    assert by_name["tiny"].strategy is Strategy.PREFIX_HASH
    assert by_name["tiny"].prefix_char_length == 50
    assert by_name["embed"].endpoints == ("http://127.0.0.1:8003",)
    assert len(by_name["two"].endpoints) == 2


@pytest.mark.parametrize(
    "doc",
    ["models: [a]", "models: {m: {urls: [ftp://x]}}", "models: {m: {urls: [], strategy: Fancy}}", "[1]"],
)
def test_static_file_errors(doc: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        parse_static(doc)


def llmmodel(name: str, ns: str = "default", **spec: object) -> dict[str, object]:
    return {
        "apiVersion": metadata.API_VERSION,
        "kind": metadata.KIND,
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"url": "hf://org/model"} | spec,
    }


def endpoint_slice(
    name: str, model: str, endpoints: list[tuple[str, bool | None]], ns: str = "default", port: int = 8000
) -> dict[str, object]:
    return {
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": {metadata.LABEL_MODEL: model, metadata.LABEL_SERVICE_NAME: model},
        },
        "addressType": "IPv4",
        "ports": [{"name": metadata.SERVER_PORT_NAME, "port": port, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [ip], "conditions": {} if ready is None else {"ready": ready}}
            for ip, ready in endpoints
        ],
    }


def test_llmmodel_fields_map_to_the_route() -> None:
    spec = model_spec_from_llmmodel(
        llmmodel(
            "llama",
            servedName="meta/llama",
            aliases=["l"],
            loadBalancing={"strategy": "PrefixHash", "prefixCharLength": 64},
        ),
        ["http://1.2.3.4:8000"],
    )
    assert spec.name == "meta/llama"
    assert spec.aliases == ("l",)
    assert spec.strategy is Strategy.PREFIX_HASH
    assert spec.prefix_char_length == 64
    assert spec.created == 1767225600
    assert model_spec_from_llmmodel(llmmodel("plain"), []).name == "plain"
    assert spec.source == "default/llama"


def test_an_llmmodel_is_read_through_the_api_types_and_unset_tunables_keep_the_router_defaults() -> None:
    spec = model_spec_from_llmmodel(llmmodel("m", loadBalancing={"strategy": "PrefixHash"}), [])
    assert spec.prefix_char_length is None  # -> the router's prefix_char_length
    # Fields the CRD does not define (the API server would have pruned them) are not read.
    odd = llmmodel("m", loadBalancing={"strategy": "PrefixHash", "meanLoadFactor": 9, "replication": 3})
    spec = model_spec_from_llmmodel(odd, [])
    assert (spec.load_factor, spec.replication) == (None, None)


def test_an_llmmodel_the_crd_would_refuse_is_left_out_not_fatal() -> None:
    models = {("default", "bad"): llmmodel("bad", url="ftp://nope"), ("default", "ok"): llmmodel("ok")}
    assert [s.name for s in build_specs(models, {})] == ["ok"]


def test_only_ready_endpoints_are_routable_and_nil_ready_counts_as_ready() -> None:
    sl = endpoint_slice("s", "m", [("10.0.0.1", True), ("10.0.0.2", False), ("10.0.0.3", None)])
    assert ready_urls(sl) == ["http://10.0.0.1:8000", "http://10.0.0.3:8000"]


def test_a_terminating_pod_gets_no_new_requests_even_when_still_marked_ready() -> None:
    sl = endpoint_slice("s", "m", [("10.0.0.1", True), ("10.0.0.2", True)])
    sl["endpoints"][1]["conditions"] = {"ready": True, "serving": True, "terminating": True}
    assert ready_urls(sl) == ["http://10.0.0.1:8000"]


def test_ipv6_addresses_are_bracketed() -> None:
    sl = endpoint_slice("s", "m", [("fd00::1", True)]) | {"addressType": "IPv6"}
    assert ready_urls(sl) == ["http://[fd00::1]:8000"]


def test_slices_join_models_by_namespace_and_model_label() -> None:
    models = {("a", "m"): llmmodel("m", "a"), ("b", "m2"): llmmodel("m2", "b", servedName="other")}
    slices = {
        ("a", "m-1"): endpoint_slice("m-1", "m", [("10.0.0.1", True)], "a"),
        ("a", "m-2"): endpoint_slice("m-2", "m", [("10.0.0.2", True)], "a"),
        ("b", "m-x"): endpoint_slice("m-x", "m", [("10.9.9.9", True)], "b"),  # same label, other namespace
        ("b", "m2-1"): endpoint_slice("m2-1", "m2", [("10.0.1.1", True)], "b", port=9000),
    }
    specs = {s.name: s for s in build_specs(models, slices)}
    assert sorted(specs["m"].endpoints) == ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]
    assert specs["other"].endpoints == ("http://10.0.1.1:9000",)


def test_a_model_without_slices_is_known_but_has_no_endpoints() -> None:
    specs = build_specs({("a", "m"): llmmodel("m", "a")}, {})
    assert specs[0].name == "m"
    assert specs[0].endpoints == ()


def test_the_loser_of_a_served_name_clash_is_not_routed_under_any_name() -> None:
    older = llmmodel("first", "b", servedName="chat")
    newer = llmmodel("second", "a", servedName="own-name", aliases=["chat"])
    newer["metadata"] = {"name": "second", "namespace": "a", "creationTimestamp": "2026-01-02T00:00:00Z"}
    specs = build_specs({("a", "second"): newer, ("b", "first"): older}, {})
    assert [(s.name, s.source) for s in specs] == [("chat", "b/first")]
