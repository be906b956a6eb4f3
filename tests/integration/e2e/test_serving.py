"""`kubectl apply` an LLMModel -> Ready with real load progress -> an OpenAI SDK request through the router
is answered by the pod the operator created."""

from __future__ import annotations

import json
import time
import uuid

import openai
import pytest

from tests.integration.e2e.stack import Stack

pytestmark = pytest.mark.timeout(420)


def test_apply_to_ready_to_answer_through_the_router(stack: Stack) -> None:
    doc = stack.llm("chat", servedName="tiny-chat")
    stack.cluster.kubectl("apply", "-f", "-", input=json.dumps(doc))

    progress_seen: list[str] = []
    deadline = time.monotonic() + 240
    while True:
        status = stack.get("chat").get("status") or {}
        if status.get("loadProgress") and status["loadProgress"] not in progress_seen:
            progress_seen.append(status["loadProgress"])
        ready = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})
        if ready.get("status") == "True":
            break
        assert time.monotonic() < deadline, f"not Ready: {status}\n{stack.logs()}"
        time.sleep(0.2)
    # The server's own /ready reports reached status while it loaded (the operator probed the pod IP).
    assert progress_seen, f"no load progress ever shown in status\n{stack.logs()}"
    assert status["readyReplicas"] == 1

    request_id = f"e2e-{uuid.uuid4().hex}"
    client = openai.OpenAI(base_url=stack.router.url + "/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(
        model="tiny-chat",
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=4,
        extra_headers={"x-request-id": request_id},
    )
    assert reply.choices[0].message.content is not None
    assert reply.usage is not None
    assert reply.usage.completion_tokens > 0
    # Answered by the pod the operator created: its process logged our request id.
    [pod] = [p for p in stack.runner.history if p.namespace == stack.ns and p.name.startswith("chat-")]
    assert request_id in pod.log_path.read_text(), stack.logs()
    stack.cluster.kubectl("delete", "llmmodel", "chat", "-n", stack.ns)
