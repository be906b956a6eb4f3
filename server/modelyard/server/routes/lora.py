"""vLLM's runtime LoRA endpoints: ``POST /v1/load_lora_adapter`` and ``POST /v1/unload_lora_adapter``.

Mounted only when runtime updating is allowed (``--allow-runtime-lora-updating`` or
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=true``), as in vLLM; otherwise they are unknown routes (404).
Success answers are vLLM's plain-text sentences; refusals are the usual error envelope.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from modelyard.server.adapters import LoraAdapters
from modelyard.server.body_guard import GuardedBodyRoute
from modelyard.server.errors import LoraAdapterError
from modelyard.server.protocol import LoadLoraAdapterRequest, UnloadLoraAdapterRequest
from modelyard.server.routes.deps import RuntimeDep
from modelyard.server.runtime import ModelRuntime

router = APIRouter(prefix="/v1", tags=["lora"], route_class=GuardedBodyRoute)


def _adapters(runtime: ModelRuntime) -> LoraAdapters:
    if runtime.adapters is None:
        raise LoraAdapterError("LoRA adapters are not enabled on this server (--enable-lora).")
    return runtime.adapters


@router.post("/load_lora_adapter", response_class=PlainTextResponse)
async def load_lora_adapter(body: LoadLoraAdapterRequest, runtime: RuntimeDep) -> str:
    await _adapters(runtime).load(body.lora_name, body.lora_path, revision=body.revision)
    return f"Success: LoRA adapter '{body.lora_name}' added successfully."


@router.post("/unload_lora_adapter", response_class=PlainTextResponse)
async def unload_lora_adapter(body: UnloadLoraAdapterRequest, runtime: RuntimeDep) -> str:
    await _adapters(runtime).unload(body.lora_name)
    return f"Success: LoRA adapter '{body.lora_name}' removed successfully."
