"""Load a Hugging Face model + tokenizer with ``from_pretrained`` and resolve device, dtype and limits.

On several devices (``tensor_parallel_size`` > 1, by default every visible GPU) the decoder layers are
split into contiguous runs, one per device (``placement.py`` plans it from the layer sizes and each
device's free memory); weights load straight onto their device through a transformers ``device_map``,
and accelerate's hooks move activations across each boundary. Inputs go to the first device, logits come
from the last; each layer's KV cache lives on its layer's device.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from modelyard.server.engine.host import resident_pages
from modelyard.server.engine.model import bert_encoder
from modelyard.server.engine.model.lm_head import PackedLMHead, fast_output_projection
from modelyard.server.engine.model.placement import Placement, plan_layers
from modelyard.server.engine.types import EngineConfig, Task

log = logging.getLogger("modelyard.server.engine.model.loader")

ProgressCallback = Callable[[str, float], None]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Config attributes that carry a model's context length, most specific first.
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


@dataclass(slots=True)
class LoadedModel:
    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    task: Task
    max_model_len: int
    device: str
    dtype: str
    eos_token_ids: frozenset[int]
    vocab_size: int
    is_causal_lm: bool
    num_layers: int
    name: str
    # How the weights were placed, e.g. "cuda:0" or "layers 0-15 on cuda:0, layers 16-31 on cuda:1 (...)".
    placement: str = ""
    devices: tuple[str, ...] = ()


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was requested but torch sees no CUDA device")
    return torch.device(device)


def resolve_devices(device: torch.device, tensor_parallel_size: int | None) -> list[str]:
    """The devices the layers are split over: every visible GPU by default, as vLLM does. On CPU there is
    one device; asking for more repeats it (the split then only exercises the placement, for tests)."""
    if device.type == "cuda":
        visible = torch.cuda.device_count()
        if device.index is not None:
            return [str(device)] if (tensor_parallel_size or 1) == 1 else _too_many(1, tensor_parallel_size)
        n = tensor_parallel_size or visible
        if n > visible:
            return _too_many(visible, n)
        return [f"cuda:{i}" for i in range(n)]
    return [str(device)] * (tensor_parallel_size or 1)


def _too_many(visible: int, asked: int | None = None) -> list[str]:
    raise ValueError(f"--tensor-parallel-size {asked} needs {asked} GPUs but {visible} are visible")


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype != "auto":
        return _DTYPES[dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _context_length(config: Any) -> int | None:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in _CONTEXT_KEYS:
        value = getattr(text, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _eos_ids(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    ids: set[int] = set()
    sources = [
        getattr(getattr(model, "generation_config", None), "eos_token_id", None),
        getattr(model.config, "eos_token_id", None),
        tokenizer.eos_token_id,
    ]
    for value in sources:
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(v for v in value if isinstance(v, int))
    return frozenset(ids)


def _vocab_size(model: Any) -> int:
    # The logits' width (the LM head), which can exceed the tokenizer's vocabulary.
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    embeddings = head if isinstance(head, torch.nn.Module) else model.get_input_embeddings()
    weight = embeddings.weight
    assert isinstance(weight, torch.Tensor)
    return int(weight.shape[0])


def load_tokenizer(config: EngineConfig) -> PreTrainedTokenizerBase:
    """Only the tokenizer (no weights): what the HTTP process needs when the engine runs apart."""
    common: dict[str, Any] = {"revision": config.revision, "trust_remote_code": config.trust_remote_code}
    if config.hf_token:
        common["token"] = config.hf_token
    tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(config.model, **common)
    return tokenizer


@dataclass(frozen=True)
class _ModuleGroups:
    layers_prefix: str  # e.g. "model.layers"
    before: list[str]  # run before the layers: embeddings (first device)
    after: list[str]  # run after: final norm, LM head (last device)
    layer_bytes: list[int]
    before_bytes: int
    after_bytes: int


def _bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters()) + sum(
        b.numel() * b.element_size() for b in module.buffers()
    )


def module_groups(model: torch.nn.Module, num_layers: int) -> _ModuleGroups:
    """Split a (meta-device) model into before / decoder layers / after, in forward order."""
    path = next(
        (
            name
            for name, m in model.named_modules()
            if isinstance(m, torch.nn.ModuleList) and len(m) == num_layers and num_layers > 0
        ),
        None,
    )
    if path is None:
        raise ValueError(f"cannot find the {num_layers} decoder layers of {type(model).__name__} to split")
    before: list[str] = []
    after: list[str] = []
    parent: torch.nn.Module = model
    prefix = ""
    for part in path.split("."):
        seen_path = False
        for child_name, _ in parent.named_children():
            if child_name == part:
                seen_path = True
            else:
                (after if seen_path else before).append(f"{prefix}{child_name}")
        parent = getattr(parent, part)
        prefix = f"{prefix}{part}."
    # The LM head is declared after the base model but tied heads share the embedding's weight, which
    # must then stay on the embedding's device.
    hf: Any = model
    head = hf.get_output_embeddings() if hasattr(hf, "get_output_embeddings") else None
    embed = hf.get_input_embeddings() if hasattr(hf, "get_input_embeddings") else None
    if head is not None and embed is not None and head.weight is embed.weight:
        names = {m: n for n, m in model.named_modules()}
        head_name = names.get(head)
        if head_name in after:
            after.remove(head_name)
            before.append(head_name)
    modules = dict(model.named_modules())
    layers = modules[path]
    assert isinstance(layers, torch.nn.ModuleList)
    return _ModuleGroups(
        layers_prefix=path,
        before=before,
        after=after,
        layer_bytes=[_bytes(layer) for layer in layers],
        before_bytes=sum(_bytes(modules[n]) for n in before),
        after_bytes=sum(_bytes(modules[n]) for n in after),
    )


def plan_placement(
    auto_cls: Any, hf_config: Any, dtype: torch.dtype, devices: list[str], num_layers: int
) -> tuple[Placement, dict[str, str]]:
    """Plan the split from a weightless (meta) copy of the model: sizes, not weights."""
    with torch.device("meta"):
        skeleton = auto_cls.from_config(hf_config, dtype=dtype)
    groups = module_groups(skeleton, num_layers)
    free: list[int] | None = None
    if all(d.startswith("cuda") for d in devices):
        free = [int(torch.cuda.mem_get_info(torch.device(d))[0]) for d in devices]
    placement = plan_layers(devices, groups.layer_bytes, free, groups.before_bytes, groups.after_bytes)
    return placement, placement.device_map(groups.layers_prefix, groups.before, groups.after)


def _mapped(tensor: torch.Tensor) -> bool:
    # A CPU storage that torch did not allocate (it cannot resize it): here, the checkpoint's mapping.
    return tensor.device.type == "cpu" and not tensor.untyped_storage().resizable()


def _lookup_only_embedding(model: torch.nn.Module) -> torch.Tensor | None:
    """The input embedding's weight when the output projection no longer reads it: tied to a head that
    computes over its own packed copy (``PackedLMHead``); None otherwise."""
    head = model.get_output_embeddings()  # type: ignore[operator]
    embed = model.get_input_embeddings()  # type: ignore[operator]
    if isinstance(head, PackedLMHead) and isinstance(embed, torch.nn.Embedding):
        weight: torch.Tensor = embed.weight
        return weight if weight is head.weight else None
    return None


def own_weights(model: torch.nn.Module, keep: torch.Tensor | None = None) -> int:
    """Copy into memory of the process's own every CPU weight that is still a view of the checkpoint
    file; the bytes copied.

    transformers loads safetensors through a private ``mmap`` of the file and leaves the weights as
    views into it: the mapping lives while any weight does, and every page once read stays resident.
    The fast decode path builds merged and packed copies of most weights and the engine process then
    frees the originals, but the mapping, held by the embeddings alone, kept all of them resident
    (measured in docs/server.md, *Memory of the engine processes*). ``keep`` stays a view."""
    copied = 0
    with torch.no_grad():
        for module in model.modules():
            for param in module._parameters.values():
                if param is not None and param is not keep and _mapped(param):
                    param.data = param.detach().clone()  # the same Parameter: tied weights stay tied
                    copied += param.numel() * param.element_size()
            for name, buffer in module._buffers.items():
                if buffer is not None and _mapped(buffer):
                    module._buffers[name] = buffer.clone()
                    copied += buffer.numel() * buffer.element_size()
    return copied


def _own_encoder(
    config: EngineConfig, hf_config: Any, dtype: torch.dtype, device_map: dict[str, str] | None
) -> torch.nn.Module | None:
    """A local BERT-family checkpoint served for embeddings by ``bert_encoder`` (without transformers'
    modelling and loading code, and what they import); None where transformers' path serves it."""
    if config.task != "embed" or config.trust_remote_code or device_map is not None:
        return None
    model_dir = Path(config.model)
    why = bert_encoder.unsupported_reason(model_dir, hf_config) if model_dir.is_dir() else "not local"
    if why is not None:
        log.debug("embedding model through transformers: %s", why)
        return None
    log.info("embedding model through the built-in BERT encoder", extra={"model": config.model})
    return bert_encoder.BertEncoder.from_checkpoint(model_dir, hf_config, dtype)


def load_model(config: EngineConfig, progress: ProgressCallback | None = None) -> LoadedModel:
    """Load ``config.model`` (local dir or hub id) ready for the engine; blocking, call it in a thread."""

    def step(stage: str, fraction: float, **fields: Any) -> None:
        log.info(
            "model load: %s",
            stage,
            extra={"model": config.model, "stage": stage, "progress": fraction, **fields},
        )
        if progress is not None:
            progress(stage, fraction)

    started = time.monotonic()
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    common: dict[str, Any] = {"revision": config.revision, "trust_remote_code": config.trust_remote_code}
    if config.hf_token:
        common["token"] = config.hf_token
    step("resolving config", 0.0, device=str(device), dtype=str(dtype).removeprefix("torch."))
    hf_config = AutoConfig.from_pretrained(config.model, **common)
    step("loading tokenizer", 0.1)
    tokenizer = AutoTokenizer.from_pretrained(config.model, **common)
    auto_cls = AutoModelForCausalLM if config.task == "generate" else AutoModel
    text_config = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    num_layers = int(getattr(text_config, "num_hidden_layers", 0) or getattr(text_config, "n_layer", 0))
    devices = resolve_devices(device, config.tensor_parallel_size)
    device_map: dict[str, str] | None = None
    placement = str(device)
    if len(devices) > 1:
        split, device_map = plan_placement(auto_cls, hf_config, dtype, devices, num_layers)
        placement = split.describe()
        step(f"placing layers: {placement}", 0.15, devices=devices)
    # While the (long) weight load runs, /ready and the LLMModel's loadProgress say where layers go.
    step(
        "loading weights" if device_map is None else f"loading weights: {placement}", 0.2, placement=placement
    )
    try:
        model = _own_encoder(config, hf_config, dtype, device_map) or auto_cls.from_pretrained(
            config.model, config=hf_config, dtype=dtype, device_map=device_map, **common
        )
    except ValueError as exc:
        if config.task == "generate":
            raise ValueError(
                f"{config.model} is not a causal language model ({type(hf_config).__name__}); "
                "serve it with task 'embed' if it is an encoder"
            ) from exc
        raise
    if device_map is None:
        step("moving to device", 0.8)
        model.to(device)
    elif len(set(devices)) == 1:
        # Every part on one device (CPU): transformers skips the hooks; force them, so the split runs
        # the same code path as on several GPUs.
        from accelerate import dispatch_model

        model = dispatch_model(model, device_map=device_map, force_hooks=True)
    model.eval()
    model.requires_grad_(False)
    packed_head = fast_output_projection(model)  # CPU heads of causal LMs only; see lm_head.py
    # A causal LM reads every weight at each step, so its own copy costs no more than the mapping's
    # pages; an encoder looks a few embedding rows up, and its mapping holds only those. So does a
    # causal LM's tied input embedding once the head runs over its own packed copy.
    lookup_only = _lookup_only_embedding(model) if packed_head else None
    copied, released = 0, 0
    if config.task == "generate":
        copied = own_weights(model, keep=lookup_only)
    if lookup_only is not None and _mapped(lookup_only):
        released = resident_pages.release_file_mapping(lookup_only.data_ptr())

    limit = _context_length(hf_config)
    if config.max_model_len is not None:
        if limit is not None and config.max_model_len > limit:
            raise ValueError(
                f"max_model_len {config.max_model_len} exceeds the model's context length {limit}"
            )
        limit = config.max_model_len
    if limit is None:
        limit = 2048
        log.warning("model config names no context length; assuming %d", limit)
    loaded = LoadedModel(
        model=model,
        tokenizer=tokenizer,
        task=config.task,
        max_model_len=limit,
        device=devices[0],
        dtype=str(dtype).removeprefix("torch."),
        eos_token_ids=_eos_ids(model, tokenizer),
        vocab_size=_vocab_size(model),
        is_causal_lm=config.task == "generate",
        num_layers=num_layers,
        name=config.model,
        placement=placement,
        devices=tuple(devices),
    )
    params = sum(p.numel() for p in model.parameters())
    step(
        "ready",
        1.0,
        params=params,
        copied_from_checkpoint_bytes=copied,
        checkpoint_pages_released_bytes=released,
        max_model_len=limit,
        placement=placement,
        seconds=round(time.monotonic() - started, 2),
    )
    return loaded
