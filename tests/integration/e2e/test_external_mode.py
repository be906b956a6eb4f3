"""autoscaling.mode External: the built-in autoscaler never writes, and an HPA-style writer of the scale
subresource is not fought. Switching the same model to Builtin hands it back (the positive control)."""

from __future__ import annotations

import contextlib
import json
import threading
import time

import openai
import pytest

from tests.integration.e2e.stack import Stack
from tests.integration.e2e.test_autoscaling import routed, wait

pytestmark = pytest.mark.timeout(300)


def router_load(stack: Stack, model: str) -> dict[str, int]:
    import urllib.request

    with urllib.request.urlopen(stack.router.metrics_base + "/autoscaler/load", timeout=5) as resp:
        entries = json.loads(resp.read())["models"]
    return next(e for e in entries if e["name"] == model)


def test_external_mode_never_writes_and_an_hpa_style_writer_is_not_fought(stack: Stack) -> None:
    auto = {"minReplicas": 0, "maxReplicas": 3, "mode": "External", "targetRequests": 1,
            "windowSeconds": 1, "scaleDownDelaySeconds": 1}  # fmt: skip
    # Pods on KWOK's fake CPU nodes: nothing needs to serve here, only replica counts matter.
    doc = stack.llm("ext", servedName="tiny-ext", replicas=0, autoscaling=auto)
    doc["spec"]["nodeSelector"] = {"modelyard.test/pool": "cpu"}
    stack.cluster.kubectl("apply", "-f", "-", input=json.dumps(doc))
    wait("the router to know tiny-ext", lambda: routed(stack, "tiny-ext"), 60, stack)

    # A request held at zero replicas: Builtin would scale from zero within a second.
    def held_request() -> None:
        client = openai.OpenAI(base_url=stack.router.url + "/v1", api_key="unused", max_retries=0, timeout=5)
        with contextlib.suppress(openai.APIError):
            client.chat.completions.create(model="tiny-ext", messages=[{"role": "user", "content": "x"}])

    thread = threading.Thread(target=held_request)
    thread.start()
    wait("the router to hold it", lambda: router_load(stack, "tiny-ext")["held"] == 1, 10, stack)
    time.sleep(3)
    assert stack.replicas("ext") == 0
    thread.join(10)

    # An HPA (here kubectl, through the same scale subresource) sets 2; idle load would scale it down
    # after 1 s if the autoscaler were in charge.
    stack.cluster.kubectl("scale", "llmmodel", "ext", "-n", stack.ns, "--replicas=2")
    time.sleep(5)
    assert stack.replicas("ext") == 2
    assert not [e for e in stack.events("ext") if e["reason"].startswith("Scaled")]
    assert "autoscaler" not in (stack.get("ext").get("status") or {})

    # Positive control: the same model in Builtin mode is scaled down by the autoscaler.
    patch = {"spec": {"autoscaling": {"mode": "Builtin"}}}
    stack.cluster.kubectl("patch", "llmmodel", "ext", "-n", stack.ns, "--type=merge", "-p", json.dumps(patch))
    wait("Builtin to scale it to zero", lambda: stack.replicas("ext") == 0, 30, stack, 0.2)
    scaled = lambda: [e["reason"] for e in stack.events("ext") if e["reason"].startswith("Scaled")]  # noqa: E731
    assert wait("its Event", scaled, 10, stack, 0.2) == ["ScaledToZero"]
    stack.cluster.kubectl("delete", "llmmodel", "ext", "-n", stack.ns)
