"""The HTTP calls of the adapter loop: what a pod serves, load, unload (vLLM's API, or an engine's
spelling of it: builders/engines/lora.LoraApi)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiohttp

from modelyard.api import metadata as md
from modelyard.operator.builders.engines.lora import LoraApi

LIST_TIMEOUT_S = 5.0
# A load may download a hub adapter first.
LOAD_TIMEOUT_S = 300.0


class PodUnreachableError(Exception):
    """The pod did not answer (or answered 5xx): try again next round."""


@dataclass(frozen=True)
class Refusal:
    """The pod answered the load with a 4xx: the adapter is bad for it (the server's message)."""

    message: str


def _message(status: int, text: str) -> str:
    try:
        body: Any = json.loads(text)
    except ValueError:
        return f"HTTP {status}: {text.strip()[:500]}"
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return f"HTTP {status}: {error['message']}"
    if isinstance(body, dict) and body.get("message"):  # vLLM's older envelope, SGLang's
        return f"HTTP {status}: {body['message']}"
    return f"HTTP {status}: {text.strip()[:500]}"


class AdapterClient:
    def __init__(self, session: aiohttp.ClientSession, port: int = md.SERVER_PORT) -> None:
        self._session = session
        self._port = port  # every engine listens on the server port; tests run engines elsewhere

    def _url(self, ip: str, path: str) -> str:
        return f"http://{ip}:{self._port}{path}"

    async def loaded(self, ip: str, api: LoraApi) -> set[str]:
        """The adapters a pod lists in /v1/models (the entries with a `parent`)."""
        try:
            async with self._session.get(
                self._url(ip, api.models), timeout=aiohttp.ClientTimeout(total=LIST_TIMEOUT_S)
            ) as resp:
                if resp.status != 200:
                    raise PodUnreachableError(f"GET {api.models}: HTTP {resp.status}")
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise PodUnreachableError(f"GET {api.models}: {exc!r}") from exc
        return {str(m["id"]) for m in body.get("data") or [] if isinstance(m, dict) and m.get("parent")}

    async def _post(self, ip: str, path: str, payload: dict[str, Any]) -> Refusal | None:
        try:
            async with self._session.post(
                self._url(ip, path), json=payload, timeout=aiohttp.ClientTimeout(total=LOAD_TIMEOUT_S)
            ) as resp:
                text = await resp.text()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise PodUnreachableError(f"POST {path}: {exc!r}") from exc
        if status < 300:
            return None
        if 400 <= status < 500:
            return Refusal(_message(status, text))
        raise PodUnreachableError(f"POST {path}: {_message(status, text)}")

    async def load(self, ip: str, api: LoraApi, name: str, path: str, revision: str | None) -> Refusal | None:
        payload: dict[str, Any] = {"lora_name": name, "lora_path": path}
        if revision is not None:
            payload["revision"] = revision  # the built-in server's; CEL keeps it off the other engines
        return await self._post(ip, api.load, payload)

    async def unload(self, ip: str, api: LoraApi, name: str) -> None:
        """Unload; a pod that does not have it (404, or 400 from an older engine) is as good as done."""
        refusal = await self._post(ip, api.unload, {"lora_name": name})
        if refusal is not None and not refusal.message.startswith(("HTTP 404", "HTTP 400")):
            raise PodUnreachableError(f"POST {api.unload}: {refusal.message}")
