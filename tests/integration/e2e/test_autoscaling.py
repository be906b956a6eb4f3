"""The built-in autoscaler on the real control plane, with real model-server pods.

Scale from zero: a model at 0 replicas, one streaming SDK request -> replicas 1 within about a second,
the request is answered once the pod is ready; idle -> back to 0 after scaleDownDelaySeconds. Both
decisions are Events with their numbers, and status.autoscaler says what was decided last.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import openai
import pytest

from tests.cluster.client import ApiError
from tests.integration.e2e.stack import Stack

pytestmark = pytest.mark.timeout(600)


def wait(what: str, check: Any, timeout: float, stack: Stack, interval: float = 0.1) -> Any:
    """Poll ``check`` until truthy; an API call that fails on the busy shared machine is retried."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = check()
        except (OSError, ApiError) as exc:  # urllib's URLError is an OSError
            value, last_error = None, exc
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what} ({last_error!r})\n{stack.logs()}"
        time.sleep(interval)


def routed(stack: Stack, model: str) -> bool:
    client = openai.OpenAI(base_url=stack.router.url + "/v1", api_key="unused", max_retries=0)
    return any(m.id == model for m in client.models.list())


def test_scale_from_zero_then_back_to_zero(stack: Stack) -> None:
    autoscaling = {"minReplicas": 0, "maxReplicas": 2, "targetRequests": 4, "windowSeconds": 5,
                   "scaleDownDelaySeconds": 12}  # fmt: skip
    doc = stack.llm("zero", servedName="tiny-zero", replicas=0, autoscaling=autoscaling)
    stack.cluster.kubectl("apply", "-f", "-", input=json.dumps(doc))
    wait("the router to know tiny-zero", lambda: routed(stack, "tiny-zero"), 60, stack)
    time.sleep(2)  # at zero, idle: the autoscaler must leave it there
    assert stack.replicas("zero") == 0

    result: dict[str, Any] = {}

    def stream() -> None:
        client = openai.OpenAI(
            base_url=stack.router.url + "/v1", api_key="unused", max_retries=0, timeout=300
        )
        started = time.monotonic()
        result["started"] = started
        pieces = []
        with client.chat.completions.create(
            model="tiny-zero",
            messages=[{"role": "user", "content": "hello"}],
            max_tokens=8,
            stream=True,
        ) as chunks:
            for chunk in chunks:
                if chunk.choices and chunk.choices[0].delta.content:
                    result.setdefault("ttft", time.monotonic() - started)
                    pieces.append(chunk.choices[0].delta.content)
        result["text"] = "".join(pieces)
        result["total"] = time.monotonic() - started

    thread = threading.Thread(target=stream)
    thread.start()
    wait("the request to start", lambda: "started" in result, 10, stack, 0.01)
    wait("spec.replicas 1", lambda: stack.replicas("zero") == 1, 10, stack, 0.05)
    decision_s = time.monotonic() - result["started"]
    thread.join(timeout=300)
    assert result.get("text"), f"the held stream was not answered: {result}\n{stack.logs()}"
    print(f"\nscale from zero: replicas=1 after {decision_s:.2f}s; first token after {result['ttft']:.2f}s; "
          f"stream done after {result['total']:.2f}s")  # fmt: skip
    # Within one second of the request (plus this test's own polling of the API, <= 0.05 s + a GET).
    assert decision_s < 1.5, decision_s

    wait("scale back to zero", lambda: stack.replicas("zero") == 0, 120, stack, 0.5)
    reasons = [e["reason"] for e in stack.events("zero") if e["reason"].startswith("Scaled")]
    assert reasons[:2] == ["ScaledFromZero", "ScaledToZero"], reasons
    up = next(e for e in stack.events("zero") if e["reason"] == "ScaledFromZero")
    assert "replicas 0 -> 1" in up["message"], up["message"]
    assert "target 4 per replica" in up["message"], up["message"]
    status = stack.get("zero")["status"]["autoscaler"]
    assert status["reason"] == "ScaleToZero"
    assert status["desiredReplicas"] == 0
    assert status["lastScaleTime"]
    wait("the pod to go", lambda: not stack.cluster.request(
        "GET", f"/api/v1/namespaces/{stack.ns}/pods?labelSelector=modelyard.dev%2Fmodel%3Dzero")["items"],
        90, stack, 0.5)  # fmt: skip
    stack.cluster.kubectl("delete", "llmmodel", "zero", "-n", stack.ns)
