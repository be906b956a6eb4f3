"""Read one PEFT LoRA adapter (``adapter_config.json`` + ``adapter_model.safetensors``) and check it
against the base model.

PEFT adds ``lora_B(lora_A(x)) * scaling`` to each targeted ``nn.Linear``; ``scaling`` is
``lora_alpha / r``, or ``lora_alpha / sqrt(r)`` with rsLoRA. Anything this engine would have to
ignore to serve the adapter (DoRA, trained biases, extra saved modules, per-module rank or alpha
patterns, targets other than the attention and MLP projections) is refused with a message naming it,
never served half-applied.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from modelyard.server.engine.lora.errors import LoraError

# The projections an adapter may target: Llama-family names (Mistral, Qwen, SmolLM share them).
SUPPORTED_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."
_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])(?:\.default)?\.weight$")


@dataclass(frozen=True, slots=True)
class LinearShape:
    """What an adapted projection of the base model takes and gives."""

    in_features: int
    out_features: int


@dataclass(slots=True)
class LoraAdapter:
    """One adapter's weights, per base-module name: ``A`` is ``[r, in]``, ``B`` is ``[out, r]``."""

    name: str
    path: str
    rank: int
    scale: float
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        pairs = self.weights.values()
        return sum(a.numel() * a.element_size() + b.numel() * b.element_size() for a, b in pairs)

    def to(self, device: torch.device, dtype: torch.dtype) -> LoraAdapter:
        moved = {
            name: (_moved(a, device, dtype), _moved(b, device, dtype))
            for name, (a, b) in self.weights.items()
        }
        return LoraAdapter(self.name, self.path, self.rank, self.scale, moved)


def _moved(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return tensor.to(device=device, dtype=dtype).contiguous()


def _refuse_config(config: dict[str, object]) -> None:
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise LoraError(f"the adapter is a {peft_type} adapter; only LoRA adapters are supported")
    if config.get("use_dora"):
        raise LoraError("DoRA adapters (use_dora) are not supported")
    if str(config.get("bias", "none")) != "none":
        raise LoraError(f"adapters that train biases (bias={config.get('bias')!r}) are not supported")
    if config.get("modules_to_save"):
        raise LoraError(f"adapters with modules_to_save ({config.get('modules_to_save')}) are not supported")
    for key in ("rank_pattern", "alpha_pattern"):
        if config.get(key):
            raise LoraError(f"adapters with a per-module {key} are not supported")
    targets = config.get("target_modules")
    if isinstance(targets, list):
        unknown = sorted(str(t) for t in targets if str(t).rsplit(".", 1)[-1] not in SUPPORTED_TARGETS)
        if unknown:
            raise LoraError(
                f"target module(s) {', '.join(unknown)} are not supported; an adapter may target "
                f"{', '.join(SUPPORTED_TARGETS)}"
            )


def read_adapter(name: str, path: str | Path, base: dict[str, LinearShape], max_rank: int) -> LoraAdapter:
    """The adapter at ``path``, checked against ``base`` (the base model's adaptable projections by
    module name) and ``max_rank``; ``LoraError`` says what is wrong."""
    root = Path(path)
    if not root.is_dir():
        raise LoraError(f"no adapter directory at {path}")
    config_path, weights_path = root / CONFIG_FILE, root / WEIGHTS_FILE
    if not config_path.is_file():
        raise LoraError(f"{path} has no {CONFIG_FILE}")
    if not weights_path.is_file():
        raise LoraError(f"{path} has no {WEIGHTS_FILE} (only safetensors weights are read)")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise LoraError(f"{CONFIG_FILE} cannot be read: {exc}") from exc
    if not isinstance(config, dict):
        raise LoraError(f"{CONFIG_FILE} is not a JSON object")
    _refuse_config(config)
    try:
        rank = int(config["r"])
        alpha = float(config.get("lora_alpha", rank))
    except (KeyError, TypeError, ValueError) as exc:
        raise LoraError(f"{CONFIG_FILE} needs an integer r and a numeric lora_alpha") from exc
    if rank < 1:
        raise LoraError(f"the adapter's rank r={rank} must be at least 1")
    if rank > max_rank:
        raise LoraError(f"the adapter's rank {rank} is over the server's --max-lora-rank {max_rank}")
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    try:
        tensors = load_file(str(weights_path), device="cpu")
    except Exception as exc:
        raise LoraError(f"{WEIGHTS_FILE} cannot be read: {exc}") from exc
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY.match(key.removeprefix(_PEFT_PREFIX))
        if match is None:
            raise LoraError(f"unexpected tensor {key!r} in {WEIGHTS_FILE} (not a lora_A/lora_B weight)")
        parts.setdefault(match["module"], {})[match["part"]] = tensor
    if not parts:
        raise LoraError(f"{WEIGHTS_FILE} holds no LoRA weights")
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for module, pair in sorted(parts.items()):
        target = module.rsplit(".", 1)[-1]
        if target not in SUPPORTED_TARGETS:
            raise LoraError(
                f"target module {target!r} ({module}) is not supported; an adapter may target "
                f"{', '.join(SUPPORTED_TARGETS)}"
            )
        shape = base.get(module)
        if shape is None:
            raise LoraError(f"the adapter adapts {module}, which the base model does not have")
        if set(pair) != {"A", "B"}:
            raise LoraError(f"{module} has lora_{''.join(pair)} but not both lora_A and lora_B")
        a, b = pair["A"], pair["B"]
        if tuple(a.shape) != (rank, shape.in_features) or tuple(b.shape) != (shape.out_features, rank):
            raise LoraError(
                f"shape mismatch with the base model at {module}: lora_A is {list(a.shape)} and lora_B "
                f"{list(b.shape)}, the base layer needs [{rank}, {shape.in_features}] and "
                f"[{shape.out_features}, {rank}]"
            )
        weights[module] = (a, b)
    return LoraAdapter(name, str(root), rank, scale, weights)
