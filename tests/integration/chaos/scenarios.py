"""The six chaos scenarios, each under a steady load of SDK streams, and what each one records.

One scenario: start the load (20 streams through the router Service) and let it flow; inject the fault;
wait until the state converges again (observe.py); keep the load a little longer; stop it (streams in
flight finish). Recorded: requests ok and failed, streams migrated (the routers'
``modelyard_router_migrations_total{outcome="migrated"}``), seconds from the fault until converged, and
what was left behind. The tests (test_chaos.py) and bench/chaos.py run the same code; the bench holds
faults longer and runs more load.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import openai

from modelyard.api import metadata as md
from tests.cluster.drain import drain, pods_on, uncordon
from tests.cluster.podrunner import RunningPod
from tests.integration.chaos.load import StreamLoad
from tests.integration.chaos.observe import (
    api_ok,
    leftovers,
    live_pods,
    migrations,
    not_converged,
    read_facts,
    requests_running,
)
from tests.integration.chaos.stack import MODEL, REPLICAS, SERVED, ChaosStack


@dataclass
class Knobs:
    """How long and how hard: the tests use the defaults, the bench raises them."""

    workers: int = 20
    max_tokens: int = 64
    warm_streams: int = 10  # completed streams before the fault: the load is flowing
    control_plane_down_s: float = 2.0  # kube-apiserver / etcd kept down this long
    after_s: float = 2.0  # load kept on after convergence
    converge_timeout_s: float = 240.0


@dataclass
class Result:
    scenario: str
    requests_ok: int
    requests_failed: int
    streams_migrated: int
    converged_s: float
    leftovers: list[str]
    detail: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # the first few, for the record

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


Inject = Callable[[ChaosStack, dict[str, Any], Knobs], Callable[[], None] | None]


def wait(
    what: str, check: Callable[[], object], timeout: float, stack: ChaosStack, interval: float = 0.2
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}\n{stack.logs()}")
        time.sleep(interval)


def wait_converged(stack: ChaosStack, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    why: list[str] = ["not read yet"]
    while True:
        try:
            why = not_converged(read_facts(stack, MODEL, SERVED), REPLICAS)
        except Exception as exc:  # the API may be on its way back
            why = [f"read failed: {exc!r}"]
        if not why:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"not converged after {timeout:.0f}s: {why}\n{stack.logs()}")
        time.sleep(0.2)


def run(stack: ChaosStack, name: str, inject: Inject, knobs: Knobs) -> Result:
    wait_converged(stack, knobs.converge_timeout_s)  # every scenario starts from the converged state
    before = migrations(stack, SERVED)
    load = StreamLoad(stack.service.url + "/v1", SERVED, workers=knobs.workers, max_tokens=knobs.max_tokens)
    load.start()
    after: Callable[[], None] | None = None
    detail: dict[str, Any] = {}
    try:
        load.wait_ok(knobs.warm_streams)
        began = time.monotonic()
        after = inject(stack, detail, knobs)
        wait_converged(stack, knobs.converge_timeout_s)
        converged_s = time.monotonic() - began
        time.sleep(knobs.after_s)
    finally:
        load.stop()
    now = migrations(stack, SERVED)
    migrated = sum(v - before.get(port, 0.0) for port, v in now.items())
    if after is not None:
        after()
    time.sleep(1.0)  # a moment for the last deletions to land before leftovers are read
    left = leftovers(read_facts(stack, MODEL, SERVED), REPLICAS)
    detail["failed_mid_stream"] = sum(f.started_stream for f in load.failures)
    detail["failed_at_s"] = [round(f.at - began, 2) for f in load.failures]
    return Result(
        scenario=name,
        requests_ok=load.ok,
        requests_failed=len(load.failures),
        streams_migrated=int(migrated),
        converged_s=round(converged_s, 2),
        leftovers=left,
        detail=detail,
        failures=[f"{f.request_id}: {f.error}"[:300] for f in load.failures[:5]],
    )


# ---- the faults --------------------------------------------------------------------------------------


def pod_kill(stack: ChaosStack, detail: dict[str, Any], knobs: Knobs) -> None:
    """SIGKILL one model pod's server (its whole process group, engine included); the kubelet (the pod
    runner) restarts the container; streams on it migrate to the other pod."""
    names = [
        p["metadata"]["name"]
        for p in live_pods(read_facts(stack, MODEL, SERVED))
        if p["spec"].get("nodeName")
    ]
    servers = [r for r in map(stack.runner.find, names) if r is not None and r.proc is not None]
    busiest: list[RunningPod] = []

    def serving() -> bool:
        # A pod that holds no stream at the kill has nothing to migrate: kill one that is serving.
        load, pod = max(((requests_running(r), r) for r in servers), key=lambda pair: pair[0])
        busiest[:] = [pod] if load >= 1 else []
        return bool(busiest)

    wait("a model pod serving requests", serving, 30, stack, interval=0.05)
    running = busiest[0]
    assert running.proc is not None
    restarts = running.restarts
    os.killpg(running.proc.pid, signal.SIGKILL)
    detail["pod"] = running.name
    wait("the runner to restart the killed server", lambda: running.restarts > restarts, 60, stack)


def router_kill(stack: ChaosStack, detail: dict[str, Any], knobs: Knobs) -> None:
    """SIGKILL one of the two router replicas; a new replica replaces it (as its Deployment would), and
    the Service sends new connections to the ready ones. Only the streams it held may fail."""
    victim = stack.routers[0]
    backend = f"127.0.0.1:{victim.port}"
    detail["held_by_killed_router"] = stack.service.open[backend]
    stack.kill_router(victim)
    replacement = stack.start_router()
    wait(
        "the Service to send to the new replica",
        lambda: f"127.0.0.1:{replacement.port}" in stack.service.ready,
        30,
        stack,
    )


def operator_kill(stack: ChaosStack, detail: dict[str, Any], knobs: Knobs) -> Callable[[], None]:
    """SIGKILL the active operator (the highest peering priority alive); the standby must take over:
    a model applied after the kill gets its Deployment and status. A new replica joins as standby."""
    alive = stack.alive_operators()
    assert len(alive) >= 2, "needs an active operator and a standby"
    (_, active), (_, standby) = alive[0], alive[1]
    standby_writes = standby.metric("modelyard_operator_api_writes_total")
    active.kill()
    killed = time.monotonic()
    seconds = reconciled_probe(stack, "op")
    detail["takeover_s"] = round(time.monotonic() - killed, 2)
    detail["probe_reconciled_s"] = round(seconds, 2)
    detail["standby_writes"] = standby.metric("modelyard_operator_api_writes_total") - standby_writes
    assert detail["standby_writes"] > 0, f"the standby wrote nothing\n{stack.logs()}"
    replacement_priority = min(p for p, _ in alive) - 5

    def new_standby() -> None:  # the killed pod's replacement joins below every replica alive
        stack.start_operator(priority=replacement_priority)

    return new_standby


def control_plane_restart(component: str) -> Inject:
    def inject(stack: ChaosStack, detail: dict[str, Any], knobs: Knobs) -> None:
        """Stop ``component`` (SIGTERM), keep it down, start it again with the same data dir and ports;
        then the operator and both routers must act on a change made after it is back."""
        pods = {p["metadata"]["uid"]: restart_count(p) for p in live_pods(read_facts(stack, MODEL, SERVED))}
        began = time.monotonic()
        stack.plane.stop_component(component)
        detail["stopped_after_s"] = round(time.monotonic() - began, 2)  # SIGTERM until it exited
        time.sleep(knobs.control_plane_down_s)
        stack.plane.start_component(component)
        wait("the API back", lambda: api_ok(stack), 120, stack)
        detail["api_back_s"] = round(time.monotonic() - began, 2)
        detail["probe_reconciled_s"] = round(reconciled_probe(stack, component.split("-")[-1]), 2)
        after = {p["metadata"]["uid"]: restart_count(p) for p in live_pods(read_facts(stack, MODEL, SERVED))}
        detail["pods_replaced_or_restarted"] = sum(1 for uid, n in pods.items() if after.get(uid) != n)

    return inject


def node_drain(stack: ChaosStack, detail: dict[str, Any], knobs: Knobs) -> Callable[[], None]:
    """Cordon the node with the most model pods and evict them through the Eviction API, the operator's
    PodDisruptionBudget (maxUnavailable 1) in force; the Deployment re-creates them on the other node."""
    pdb = stack.cluster.get_json(f"/apis/policy/v1/namespaces/{stack.ns}/poddisruptionbudgets/{MODEL}")
    assert pdb is not None, "the operator made no PodDisruptionBudget for a 2-replica model"
    counts = {
        n: sum(1 for p in pods_on(stack.cluster, n) if p["metadata"]["namespace"] == stack.ns)
        for n in stack.nodes
    }
    node = max(stack.nodes, key=lambda n: counts[n])
    report = drain(stack.cluster, node, timeout=knobs.converge_timeout_s)
    detail.update(node=node, evicted=len(report.evicted), refused_by_pdb=report.refused_by_pdb,
                  drain_s=round(report.seconds, 2))  # fmt: skip
    return lambda: uncordon(stack.cluster, node)


SCENARIOS: dict[str, Inject] = {
    "pod kill (SIGKILL)": pod_kill,
    "router replica kill": router_kill,
    "active operator kill": operator_kill,
    "kube-apiserver restart": control_plane_restart("kube-apiserver"),
    "etcd restart": control_plane_restart("etcd"),
    "node drain": node_drain,
}


# ---- helpers -----------------------------------------------------------------------------------------


def restart_count(pod: dict[str, Any]) -> int:
    return sum(
        int(c.get("restartCount", 0)) for c in (pod.get("status") or {}).get("containerStatuses") or []
    )


def reconciled_probe(stack: ChaosStack, tag: str) -> float:
    """Applies a new LLMModel at 0 replicas and waits until the operator made its Deployment and status
    and every router lists it: proof that the control loop acts again. Deleted afterwards."""
    name = f"probe-{tag}-{int(time.time() * 1000) % 100000}"
    began = time.monotonic()
    doc = stack.llm(name, servedName=f"tiny-{name}", replicas=0)
    wait("the probe model applied", lambda: _try_apply(stack, doc), 120, stack, interval=1.0)
    base = f"/apis/{md.API_VERSION}/namespaces/{stack.ns}"

    def reconciled() -> bool:
        try:
            obj = stack.cluster.get_json(f"{base}/{md.PLURAL}/{name}") or {}
            dep = stack.cluster.get_json(f"/apis/apps/v1/namespaces/{stack.ns}/deployments/{name}")
        except Exception:
            return False
        status = obj.get("status") or {}
        generation = obj.get("metadata", {}).get("generation", 1)
        return dep is not None and status.get("observedGeneration", 0) >= generation

    wait(f"the operator to reconcile {name}", reconciled, 120, stack)
    wait(
        f"every router to list tiny-{name}",
        lambda: all(f"tiny-{name}" in _models(r.url) for r in stack.routers),
        60,
        stack,
    )
    seconds = time.monotonic() - began
    stack.cluster.kubectl(
        "delete", md.PLURAL, name, "-n", stack.ns, "--wait=true", "--timeout=60s", check=False
    )
    return seconds


def _try_apply(stack: ChaosStack, doc: dict[str, object]) -> bool:
    try:
        stack.apply(doc)
    except Exception:
        return False
    return True


def _models(url: str) -> set[str]:
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=5)
        return {m.id for m in client.models.list()}
    except openai.APIError:
        return set()


__all__ = ["SCENARIOS", "Knobs", "Result", "run"]
