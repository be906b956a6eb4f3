"""LoRA adapters as models in the router: discovery (LLMModel status + EndpointSlice targetRefs, static
files), the routing table, PrefixHash rings, the shared fair queue and the autoscaler's signal."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import aiohttp
import pytest

from modelyard.api import metadata
from modelyard.operator.autoscaler.signal import parse_load, parse_started
from modelyard.router import errors
from modelyard.router.balancer import HashRing
from modelyard.router.body import parse_body
from modelyard.router.discovery.specs import build_specs, ready_endpoints
from modelyard.router.discovery.static import parse_static
from modelyard.router.fairqueue import FairQueues
from modelyard.router.health import Health
from modelyard.router.keys import KeyStore, parse_keys
from modelyard.router.metrics import RouterMetrics
from modelyard.router.peer_names import rename_for_upstream
from modelyard.router.proxy import Proxy
from modelyard.router.settings import RouterSettings
from modelyard.router.table import (
    AdapterSpec,
    ModelSpec,
    RouteDefaults,
    RoutingTable,
    Snapshot,
    Strategy,
    build_snapshot,
)

A, B, C = "http://10.0.0.1:8000", "http://10.0.0.2:8000", "http://10.0.0.3:8000"


# ---- the routing table --------------------------------------------------------------------------------


def test_an_adapter_is_a_route_over_the_parents_pods_that_have_it() -> None:
    snap = build_snapshot(
        [
            ModelSpec(
                "base",
                (A, B),
                aliases=("b",),
                strategy=Strategy.PREFIX_HASH,
                source="ns/base-model",
                created=7,
                max_num_seqs=8,
                engine="vllm",
                adapters=(AdapterSpec("sql", (B, C)), AdapterSpec("new")),
            )
        ],
        RouteDefaults(prefix_char_length=50),
    )
    sql = snap.routes["sql"]
    # C is not a ready pod of the base: never routed to, even if a stale status names it.
    assert sql.endpoints == (B,)
    assert (sql.parent, sql.source, sql.created, sql.max_num_seqs) == ("base", "ns/base-model", 7, 8)
    assert sql.engine == "vllm"  # a cut adapter stream continues through the pods' own engine
    assert (sql.strategy, sql.prefix_char_length) == (Strategy.PREFIX_HASH, 50)
    assert sql.ring is not None
    assert sql.ring.salt == "sql"
    # Listed, loaded nowhere yet: a route with no endpoint, so requests are held (not 404).
    assert snap.routes["new"].endpoints == ()
    assert [m.name for m in snap.models] == ["base", "new", "sql"]
    assert snap.routes["base"].parent is None
    assert snap.routes["b"] is snap.routes["base"]


def test_adapter_names_lose_to_model_names_and_aliases_and_to_earlier_adapters() -> None:
    snap = build_snapshot(
        [
            ModelSpec("one", (A,), adapters=(AdapterSpec("two", (A,)), AdapterSpec("x", (A,)))),
            ModelSpec("two", (B,), aliases=("alias",)),
            ModelSpec("three", (C,), adapters=(AdapterSpec("alias", (C,)), AdapterSpec("x", (C,)))),
        ],
        RouteDefaults(),
    )
    assert snap.routes["two"].parent is None
    assert snap.routes["two"].endpoints == (B,)
    assert snap.routes["alias"].name == "two"
    assert snap.routes["x"].parent == "one"
    assert sorted(m.name for m in snap.models) == ["one", "three", "two", "x"]


def test_a_losing_duplicate_models_adapters_are_not_routed() -> None:
    snap = build_snapshot(
        [
            ModelSpec("m", (A,), source="ns1/m"),
            ModelSpec("m", (B,), source="ns2/m", adapters=(AdapterSpec("z"),)),
        ],
        RouteDefaults(),
    )
    assert "z" not in snap.routes


def test_least_load_adapters_have_no_ring() -> None:
    snap = build_snapshot([ModelSpec("m", (A, B), adapters=(AdapterSpec("z", (A,)),))], RouteDefaults())
    assert snap.routes["z"].ring is None
    assert snap.routes["z"].strategy is Strategy.LEAST_LOAD


# ---- PrefixHash -----------------------------------------------------------------------------------------


def test_a_subset_ring_walks_like_the_full_ring_with_the_others_left_out() -> None:
    full = HashRing((A, B, C), 50, salt="sql")
    subset = HashRing((A, C), 50, salt="sql")
    for i in range(200):
        key = f"conversation {i}"
        assert list(subset.walk(key)) == [ep for ep in full.walk(key) if ep in (A, C)]


def test_the_adapter_salt_places_keys_independently_of_the_base() -> None:
    base, adapter = HashRing((A, B, C), 50), HashRing((A, B, C), 50, salt="sql")
    keys = [f"prompt {i}" for i in range(300)]
    first = [next(base.walk(k)) for k in keys]
    salted = [next(adapter.walk(k)) for k in keys]
    assert salted == [next(adapter.walk(k)) for k in keys]  # deterministic
    assert sum(a != b for a, b in zip(first, salted, strict=True)) > 100  # ~2/3 differ by chance
    assert set(salted) == {A, B, C}


# ---- static discovery ------------------------------------------------------------------------------------


def test_static_adapters_as_a_list_or_a_map() -> None:
    specs = parse_static(
        """
models:
  base:
    urls: [http://127.0.0.1:8001/, http://127.0.0.1:8002]
    adapters: [sql, chat-fr]
  other:
    urls: [http://127.0.0.1:8003, http://127.0.0.1:8004]
    adapters: {only-one: [http://127.0.0.1:8004/], nowhere: []}
"""
    )
    by_name = {s.name: s for s in specs}
    assert by_name["base"].adapters == (
        AdapterSpec("sql", ("http://127.0.0.1:8001", "http://127.0.0.1:8002")),
        AdapterSpec("chat-fr", ("http://127.0.0.1:8001", "http://127.0.0.1:8002")),
    )
    assert by_name["other"].adapters == (
        AdapterSpec("only-one", ("http://127.0.0.1:8004",)),
        AdapterSpec("nowhere", ()),
    )


@pytest.mark.parametrize(
    "adapters",
    ["{a: [http://elsewhere:1]}", "[bad/name]", "[-dash]", "{a: ftp}"],
)
def test_static_adapter_errors(adapters: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        parse_static(f"models: {{m: {{urls: [http://x:1], adapters: {adapters}}}}}")


# ---- Kubernetes discovery ----------------------------------------------------------------------------------


def llmmodel(
    name: str,
    adapters: list[str],
    status: list[dict[str, Any]],
    created: str = "2026-01-01T00:00:00Z",
    **spec: Any,
) -> dict[str, Any]:
    return {
        "apiVersion": metadata.API_VERSION,
        "kind": metadata.KIND,
        "metadata": {"name": name, "namespace": "ns", "creationTimestamp": created},
        "spec": {
            "url": "hf://org/model",
            "adapters": [{"name": a, "source": f"hf://org/{a}"} for a in adapters],
        }
        | spec,
        "status": {"adapters": status},
    }


def pod_slice(name: str, model: str, pods: list[tuple[str, str, bool]]) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns", "labels": {metadata.LABEL_MODEL: model}},
        "addressType": "IPv4",
        "ports": [{"name": metadata.SERVER_PORT_NAME, "port": 8000}],
        "endpoints": [
            {
                "addresses": [ip],
                "conditions": {"ready": ready},
                "targetRef": {"kind": "Pod", "name": pod, "namespace": "ns"},
            }
            for pod, ip, ready in pods
        ],
    }


def test_endpoints_carry_their_pod_name_from_target_ref() -> None:
    sl = pod_slice("s", "m", [("m-0", "10.0.0.1", True), ("m-1", "10.0.0.2", False)])
    sl["endpoints"].append({"addresses": ["10.0.0.3"]})  # hand-made, no targetRef
    assert ready_endpoints(sl) == [(A, "m-0"), (C, None)]


def test_adapters_route_to_the_ready_pods_status_names() -> None:
    status = [
        {"name": "sql", "state": "Loading", "loaded": "2/3", "pods": ["m-0", "m-1", "m-gone"]},
        {"name": "old", "state": "Ready", "pods": ["m-0"]},  # no longer in spec: being unloaded
    ]
    models = {("ns", "m"): llmmodel("m", ["sql", "fresh"], status, servedName="base")}
    slices = {
        ("ns", "m-a"): pod_slice("m-a", "m", [("m-0", "10.0.0.1", True), ("m-1", "10.0.0.2", False)]),
        ("ns", "m-b"): pod_slice("m-b", "m", [("m-2", "10.0.0.3", True)]),
    }
    [spec] = build_specs(models, slices)
    assert sorted(spec.endpoints) == [A, C]
    # m-1 is not ready, m-gone has no endpoint; "fresh" is loaded nowhere yet; "old" is gone.
    assert spec.adapters == (AdapterSpec("sql", (A,)), AdapterSpec("fresh", ()))
    snap = build_snapshot([spec], RouteDefaults())
    assert snap.routes["sql"].source == "ns/m"
    assert snap.routes["fresh"].endpoints == ()
    assert "old" not in snap.routes


def test_an_adapter_name_taken_by_an_older_model_makes_the_newer_model_lose() -> None:
    older = llmmodel("first", [], [], servedName="chat")
    newer = llmmodel("second", ["chat"], [], created="2026-01-02T00:00:00Z")
    specs = build_specs({("ns", "second"): newer, ("ns", "first"): older}, {})
    assert [s.source for s in specs] == ["ns/first"]


# ---- the fair queue and the autoscaler -------------------------------------------------------------------


def _settings(**extra: Any) -> RouterSettings:
    return RouterSettings(_cli_parse_args=[], queue_pod_extra=0, **extra)  # type: ignore[call-arg]


async def test_adapter_requests_take_slots_of_the_parents_pods() -> None:
    table = RoutingTable()
    table.replace([ModelSpec("base", (A,), max_num_seqs=1, adapters=(AdapterSpec("sql", (A,)),))])
    queues = FairQueues(_settings(), table, RouterMetrics())
    base, sql = table.lookup("base"), table.lookup("sql")
    assert base is not None
    assert sql is not None
    release = await queues.acquire(base, "k")
    assert release is not None
    waiting = asyncio.create_task(queues.acquire(sql, "k"))
    await asyncio.sleep(0.01)
    assert not waiting.done()  # the pod's one slot is the base request's
    release()
    release_sql = await asyncio.wait_for(waiting, 1)
    assert release_sql is not None
    release_sql()
    assert set(queues.queues) == {"base"}


async def test_an_adapter_loaded_nowhere_takes_no_slot_while_it_is_held() -> None:
    table = RoutingTable()
    table.replace([ModelSpec("base", (A,), max_num_seqs=1, adapters=(AdapterSpec("sql"),))])
    queues = FairQueues(_settings(), table, RouterMetrics())
    sql = table.lookup("sql")
    assert sql is not None
    assert await queues.acquire(sql, "k") is None
    assert queues.queues == {}


def _no_session() -> aiohttp.ClientSession:
    raise AssertionError("no request is proxied here")


def test_the_autoscaler_counts_adapter_requests_toward_the_parent_llmmodel() -> None:
    table = RoutingTable()
    table.replace([ModelSpec("base", (), source="ns/m", adapters=(AdapterSpec("sql"),))])
    metrics = RouterMetrics()
    settings = _settings()
    proxy = Proxy(
        settings, table, Health(table, 3, 1, 10), KeyStore(), metrics, _no_session, random.Random(0)
    )
    proxy.holds.held["sql"] = 2  # two requests wait for the adapter at zero replicas
    proxy.in_flight["sql"] = 2
    proxy.started["sql"] = 3
    proxy.started["base"] = 1
    body = {"models": proxy.load()}
    assert parse_load(body) == {("ns", "m"): (2, 2)}
    assert parse_started(body) == {("ns", "m"): 4}


def test_an_adapter_removed_from_the_table_keeps_counting_toward_its_base() -> None:
    # A base total that drops reads as a router restart to the autoscaler (a busy poll).
    table = RoutingTable()
    table.replace([ModelSpec("base", (), source="ns/m", adapters=(AdapterSpec("sql"),))])
    proxy = Proxy(
        _settings(),
        table,
        Health(table, 3, 1, 10),
        KeyStore(),
        RouterMetrics(),
        _no_session,
        random.Random(0),
    )
    proxy.started.update(base=1, sql=3)
    proxy.started_source.update(base="ns/m", sql="ns/m")
    table.replace([ModelSpec("base", (), source="ns/m")])
    assert parse_started({"models": proxy.load()}) == {("ns", "m"): 4}


# ---- allow-lists ------------------------------------------------------------------------------------------


def test_allow_lists_treat_adapters_and_the_base_as_different_models() -> None:
    keys = KeyStore()
    keys.load(
        parse_keys(
            "keys: [{name: a, key: sk-adapter-1, models: [sql]},"
            " {name: b, key: sk-base-0001, models: [base]}]"
        )
    )
    adapter_only = keys.authenticate("Bearer sk-adapter-1")
    base_only = keys.authenticate("Bearer sk-base-0001")
    keys.check_model(adapter_only, "sql", "sql")
    keys.check_model(base_only, "base", "base")
    with pytest.raises(errors.RouterError) as refused:
        keys.check_model(adapter_only, "base", "base")
    assert (refused.value.status, refused.value.code) == (404, "model_not_found")
    with pytest.raises(errors.RouterError):
        keys.check_model(base_only, "sql", "sql")


# ---- peer engines' adapter names -------------------------------------------------------------------------


def test_sglang_pods_get_an_adapter_as_base_colon_adapter_and_others_get_the_bytes_unchanged() -> None:
    def routes(engine: str) -> Snapshot:
        spec = ModelSpec("base", (A,), engine=engine, adapters=(AdapterSpec("sql", (A,)),))
        return build_snapshot([spec], RouteDefaults())

    raw = b'{"model": "sql", "messages": [{"role": "user", "content": "h\\u00e9"}], "stream": true}'
    routed = parse_body(raw)
    sglang = routes("sglang")
    renamed, body = rename_for_upstream(sglang.routes["sql"], routed, raw)
    assert json.loads(body) == {**json.loads(raw), "model": "base:sql"}
    assert renamed.fields["model"] == "base:sql"
    assert renamed.stream is True
    assert rename_for_upstream(sglang.routes["base"], routed, raw) == (routed, raw)
    vllm = routes("vllm")
    assert rename_for_upstream(vllm.routes["sql"], routed, raw) == (routed, raw)
