"""LoRA adapters end to end: an LLMModel lists adapters, the operator loads them into every ready pod at
runtime, status.adapters says which pods serve which, and an SDK call by adapter name through the router
returns PEFT's tokens. Adding an adapter loads it without restarting a pod; removing one unloads it.

The adapters are hf:// ones, served from a hub cache laid out by hand (HF_HOME + HF_HUB_OFFLINE=1 in the
pod env: the pod runner has no volumes and no hub is reachable), as huggingface_hub lays it out."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from transformers import AutoTokenizer

from tests.fixtures.hub_cache import publish
from tests.fixtures.lora import make_adapter, peft_greedy
from tests.integration.e2e.stack import Stack

pytestmark = pytest.mark.timeout(600)

NAME = "lora"
N = 6
PROMPT = [5, 17, 29, 41, 53, 65, 77]


def adapter(name: str) -> dict[str, str]:
    return {"name": name, "source": f"hf://local/{name}"}


def model_doc(
    stack: Stack, hf_home: Path, names: list[str], name: str = NAME, replicas: int = 2
) -> dict[str, Any]:
    doc = stack.llm(name, servedName=f"tiny-{name}", replicas=replicas, adapters=[adapter(n) for n in names])
    server = doc["spec"]["server"]
    server["env"] += [
        {"name": "HF_HOME", "value": str(hf_home)},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
    ]
    # LoRA on through the limits too: the first adapter then changes no pod template.
    server["lora"] = {"maxLoras": 3, "maxLoraRank": 16}
    return doc


def wait_for(
    stack: Stack, what: str, check: Callable[[dict[str, Any]], bool], timeout: float = 300, name: str = NAME
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        obj = stack.get(name)
        if check(obj):
            return obj
        assert time.monotonic() < deadline, (
            f"{what}: {json.dumps(obj.get('status'), indent=1)}\n{stack.logs()}"
        )
        time.sleep(0.3)


def condition(obj: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == ctype), {})


def model_pods(stack: Stack) -> dict[str, str]:
    """name -> uid of the model's live pods."""
    pods = stack.cluster.get_json(
        f"/api/v1/namespaces/{stack.ns}/pods?labelSelector=modelyard.dev/model%3D{NAME}"
    )
    assert pods is not None
    return {
        p["metadata"]["name"]: p["metadata"]["uid"]
        for p in pods["items"]
        if not p["metadata"].get("deletionTimestamp")
    }


def served_everywhere(names: list[str]) -> Callable[[dict[str, Any]], bool]:
    def check(obj: dict[str, Any]) -> bool:
        status = obj.get("status") or {}
        adapters = {a["name"]: a for a in status.get("adapters") or []}
        ready_pods = status.get("readyReplicas") == 2
        return (
            ready_pods
            and sorted(adapters) == sorted(names)
            and all(
                a["state"] == "Ready" and a["loaded"] == "2/2" and len(a["pods"]) == 2
                for a in adapters.values()
            )
            and condition(obj, "AdaptersReady").get("status") == "True"
        )

    return check


def test_adapters_load_on_every_pod_without_restarts(
    stack: Stack, tiny_llama_path: Path, tmp_path: Path
) -> None:
    hf_home = tmp_path / "hf"
    files = {}
    for seed, name in enumerate(("sql", "support", "legal"), start=21):
        files[name] = make_adapter(tiny_llama_path, tmp_path / "files" / name, r=8, seed=seed)
        publish(hf_home, f"local/{name}", files[name])
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama_path))

    def reference(name: str) -> str:
        return str(
            tokenizer.decode(peft_greedy(tiny_llama_path, files[name], PROMPT, N), skip_special_tokens=False)
        )

    client = openai.OpenAI(base_url=stack.router.url + "/v1", api_key="unused", max_retries=0)

    def complete(model: str) -> str:
        reply = client.completions.create(
            model=model,
            prompt=PROMPT,
            max_tokens=N,
            temperature=0,
            extra_body={"ignore_eos": True, "skip_special_tokens": False},
        )
        return reply.choices[0].text

    # Two adapters: Ready, both served by both pods, per status.adapters.
    stack.cluster.kubectl("apply", "-f", "-", input=json.dumps(model_doc(stack, hf_home, ["sql", "support"])))
    obj = wait_for(stack, "two adapters on both pods", served_everywhere(["sql", "support"]))
    pods = model_pods(stack)
    assert len(pods) == 2
    for entry in obj["status"]["adapters"]:
        assert sorted(entry["pods"]) == sorted(pods), entry
    assert condition(obj, "Ready")["status"] == "True"

    # By adapter name through the router: PEFT's greedy tokens (several calls, so both pods answer).
    for name in ("sql", "support"):
        for _ in range(3):
            assert complete(name) == reference(name), name
    assert complete("tiny-lora") != complete("sql")
    listed = {m.id: m.model_dump() for m in client.models.list().data}
    assert listed["sql"]["parent"] == "tiny-lora"

    # A third adapter loads at runtime: the same pods (UIDs) serve it.
    stack.cluster.kubectl(
        "apply", "-f", "-", input=json.dumps(model_doc(stack, hf_home, ["sql", "support", "legal"]))
    )
    wait_for(stack, "the third adapter on both pods", served_everywhere(["sql", "support", "legal"]))
    assert model_pods(stack) == pods
    assert complete("legal") == reference("legal")

    # Removing one unloads it from every pod: 404 from the pods themselves, and through the router.
    stack.cluster.kubectl("apply", "-f", "-", input=json.dumps(model_doc(stack, hf_home, ["sql", "legal"])))
    wait_for(stack, "support gone from status", served_everywhere(["sql", "legal"]))
    for name in pods:
        running = stack.runner.find(name)
        assert running is not None
        direct = openai.OpenAI(base_url=f"http://{running.host}:8000/v1", api_key="unused", max_retries=0)
        deadline = time.monotonic() + 60
        while "support" in {m.id for m in direct.models.list().data}:
            assert time.monotonic() < deadline, f"support still loaded on {name}\n{stack.logs()}"
            time.sleep(0.3)
        with pytest.raises(openai.NotFoundError):
            direct.completions.create(model="support", prompt=PROMPT, max_tokens=2)
    with pytest.raises(openai.NotFoundError):
        complete("support")
    assert model_pods(stack) == pods
    warnings = [e for e in stack.events(NAME) if e.get("type") == "Warning"]
    assert warnings == [], warnings
    stack.cluster.kubectl("delete", "llmmodel", NAME, "-n", stack.ns)


def test_an_adapter_the_pod_refuses_is_failed_with_the_servers_message_and_one_warning(
    stack: Stack, tmp_path: Path
) -> None:
    name = "lora-bad"
    # An empty hub cache, offline: the pod refuses the hub id with its own message.
    stack.cluster.kubectl(
        "apply", "-f", "-", input=json.dumps(model_doc(stack, tmp_path / "hf", ["missing"], name, replicas=1))
    )

    def failed(obj: dict[str, Any]) -> bool:
        adapters = (obj.get("status") or {}).get("adapters") or []
        return bool(adapters) and adapters[0]["state"] == "Failed"

    obj = wait_for(stack, "the adapter Failed", failed, name=name)
    [status] = obj["status"]["adapters"]
    assert status["loaded"] == "0/1"
    assert status["pods"] == []
    assert "local/missing is not in the hub cache" in status["message"], status
    cond = condition(obj, "AdaptersReady")
    assert (cond["status"], cond["reason"]) == ("False", "LoadFailed")
    assert condition(obj, "Ready")["status"] == "True"  # the base model still serves

    deadline = time.monotonic() + 60
    while not (warnings := [e for e in stack.events(name) if e.get("reason") == "AdapterLoadFailed"]):
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.3)
    [event] = warnings
    assert event["type"] == "Warning"
    assert "adapter missing:" in event["message"]
    assert "is not in the hub cache" in event["message"]

    # Removed from the list: no adapter status, no AdaptersReady, still one Warning (not one per round).
    stack.cluster.kubectl(
        "apply", "-f", "-", input=json.dumps(model_doc(stack, tmp_path / "hf", [], name, 1))
    )
    obj = wait_for(
        stack, "adapter status cleared", lambda o: not (o.get("status") or {}).get("adapters"), name=name
    )
    assert condition(obj, "AdaptersReady") == {}
    assert len([e for e in stack.events(name) if e.get("reason") == "AdapterLoadFailed"]) == 1
    stack.cluster.kubectl("delete", "llmmodel", name, "-n", stack.ns)
