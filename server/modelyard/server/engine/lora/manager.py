"""``LoraManager``: the adapters an engine serves, its host-side cache and its device slots.

- **Registry** (event loop and engine thread, under a lock): name -> adapter id and path. Ids are never
  reused, so a prefix-cache salt or a slot never confuses an unloaded adapter with a later one of the
  same name.
- **Host cache** (``max_cpu_loras``, least recently used out): the adapters' weights on the host; a
  registered adapter evicted from it is read again from its path when a request needs it.
- **Device slots** (``max_loras``): the adapters the running batch may use at once. The scheduler's
  admission gate keeps the distinct adapters of the running rows within that bound; ``prepare`` puts
  each forward's adapters into slots (reusing a slot that already holds one) and builds the
  per-adapter row segments every ``LoraLinear`` reads.

Unloading removes the name at once (new requests get 404) while requests already admitted or queued
under it keep its weights until they finish.
"""

from __future__ import annotations

import collections
import itertools
import threading
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from modelyard.server.engine.core.sequence import Sequence
from modelyard.server.engine.lora.adapter import SUPPORTED_TARGETS, LinearShape, LoraAdapter, read_adapter
from modelyard.server.engine.lora.errors import LoraError, LoraNotFoundError
from modelyard.server.engine.lora.fused import LAYER_INDEX, FusedLora, pack_inputs
from modelyard.server.engine.lora.layers import LoraBatch, LoraLinear, Segment
from modelyard.server.engine.lora.side_thread import one_openmp_thread


@dataclass(frozen=True, slots=True)
class LoraLimits:
    max_loras: int = 1  # adapters one batch may mix (device slots)
    max_lora_rank: int = 16
    max_cpu_loras: int | None = None  # host-side cache; None: max_loras


@dataclass(frozen=True, slots=True)
class _Entry:
    id: int
    name: str
    path: str


def wrap_projections(model: nn.Module, batch: LoraBatch, max_loras: int) -> dict[str, LoraLinear]:
    """Replace every supported projection of ``model``'s decoder layers by a ``LoraLinear`` (in place)."""
    wrapped: dict[str, LoraLinear] = {}
    for name, module in list(model.named_modules()):
        target = name.rsplit(".", 1)[-1]
        in_layer = LAYER_INDEX.search(name) is not None
        if target not in SUPPORTED_TARGETS or not isinstance(module, nn.Linear) or not in_layer:
            continue
        parent = model.get_submodule(name.rsplit(".", 1)[0])
        layer = LoraLinear(module, batch, max_loras)
        setattr(parent, target, layer)
        wrapped[name] = layer
    if not wrapped:
        raise ValueError(
            "--enable-lora: the model has none of the projections adapters may target "
            f"({', '.join(SUPPORTED_TARGETS)})"
        )
    return wrapped


class LoraManager:
    def __init__(
        self, model: nn.Module, limits: LoraLimits, device: torch.device, dtype: torch.dtype
    ) -> None:
        self.limits = limits
        self.max_cpu = limits.max_cpu_loras or limits.max_loras
        self._device = device
        self._dtype = dtype
        self._batch = LoraBatch()
        self._layers = wrap_projections(model, self._batch, limits.max_loras)
        self.shapes = {name: LinearShape(m.in_features, m.out_features) for name, m in self._layers.items()}
        # The same adapters, fused per projection group, for the fast decode path (engine/fast_llama.py).
        self._fused = FusedLora(self._batch, self.shapes, limits.max_loras)
        self._fused.attach(model)
        self._lock = threading.Lock()
        self._ids = itertools.count(1)  # 0 is the base model
        self._by_name: dict[str, _Entry] = {}
        self._by_id: dict[int, _Entry] = {}  # registered, plus unloaded ones still in use
        self._host: collections.OrderedDict[int, LoraAdapter] = collections.OrderedDict()
        self._slots: list[int] = [0] * limits.max_loras  # adapter id per device slot (0: empty)

    # ----- registry (event loop) -----

    def read(self, name: str, path: str) -> LoraAdapter:
        """Blocking (file I/O): the adapter at ``path``, checked against the base model. Called on a
        worker thread (the engine's own re-read after eviction too): one OpenMP thread, so that
        thread forms no OpenMP team that would slow the engine's steps (``side_thread.py``)."""
        with one_openmp_thread():
            adapter = read_adapter(name, path, self.shapes, self.limits.max_lora_rank)
            # q/k/v's A (and gate/up's) back to back: the fast path's group shrink reads them in place.
            return pack_inputs(adapter.to(torch.device("cpu"), self._dtype))

    def register(self, adapter: LoraAdapter) -> int:
        with self._lock:
            if adapter.name in self._by_name:
                raise LoraError(f"an adapter named {adapter.name!r} is already loaded")
            entry = _Entry(next(self._ids), adapter.name, adapter.path)
            self._by_name[entry.name] = entry
            self._by_id[entry.id] = entry
            self._cache(entry.id, adapter)
            return entry.id

    def unregister(self, name: str) -> None:
        with self._lock:
            entry = self._by_name.pop(name, None)
            if entry is None:
                raise LoraNotFoundError(f"no adapter named {name!r} is loaded")

    def resolve(self, name: str) -> int:
        with self._lock:
            entry = self._by_name.get(name)
        if entry is None:
            raise LoraNotFoundError(f"The model `{name}` does not exist.")
        return entry.id

    def names(self) -> list[str]:
        with self._lock:
            return list(self._by_name)

    def name_of(self, lora_id: int) -> str:
        entry = self._by_id.get(lora_id)
        return entry.name if entry is not None else ""

    @staticmethod
    def salt(lora_id: int) -> bytes | None:
        """The prefix-cache salt of an adapter's blocks: KV computed under one adapter serves no other."""
        return None if lora_id == 0 else f"lora:{lora_id}".encode()

    # ----- engine thread -----

    def admits(self, seq: Sequence, running: Iterable[Sequence]) -> bool:
        """Whether ``seq`` may join the running batch without more distinct adapters than slots."""
        if seq.lora_id == 0:
            return True
        active = {s.lora_id for s in running if s.lora_id}
        return seq.lora_id in active or len(active) < self.limits.max_loras

    def prepare(self, seqs: list[Sequence]) -> None:
        """Slots and row segments for a forward over ``seqs`` (in the forward's row order)."""
        rows: dict[int, list[int]] = {}
        for index, seq in enumerate(seqs):
            if seq.lora_id:
                rows.setdefault(seq.lora_id, []).append(index)
        segments: list[Segment] = []
        for lora_id, indices in rows.items():
            slot, adapter = self._slot_for(lora_id, set(rows))
            where = torch.tensor(indices, dtype=torch.long, device=self._device)
            segments.append(Segment(slot, where, adapter.scale, whole=len(indices) == len(seqs)))
        self._batch.set(tuple(segments))

    def clear(self) -> None:
        self._batch.set(())

    def forget_unused(self, in_use: Iterable[int]) -> None:
        """Drop unloaded adapters no queued or running request uses any more."""
        if len(self._by_id) == len(self._by_name):
            return  # nothing unloaded is pending (checked every step: keep it cheap)
        used = set(in_use)
        with self._lock:
            registered = {e.id for e in self._by_name.values()}
            for lora_id in [i for i in self._by_id if i not in registered and i not in used]:
                del self._by_id[lora_id]
                self._host.pop(lora_id, None)
                if lora_id in self._slots:
                    self._fill(self._slots.index(lora_id), 0, None)

    def _slot_for(self, lora_id: int, wanted: set[int]) -> tuple[int, LoraAdapter]:
        adapter = self._host_adapter(lora_id)
        if lora_id in self._slots:
            return self._slots.index(lora_id), adapter
        free = [i for i, held in enumerate(self._slots) if held not in wanted]
        if not free:
            raise RuntimeError("more adapters in one forward than --max-loras slots")
        slot = next((i for i in free if self._slots[i] == 0), free[0])
        self._fill(slot, lora_id, pack_inputs(adapter.to(self._device, self._dtype)))
        return slot, adapter

    def _fill(self, slot: int, lora_id: int, adapter: LoraAdapter | None) -> None:
        self._slots[slot] = lora_id
        self._fused.fill(slot, adapter)
        for name, layer in self._layers.items():
            layer.slots[slot] = adapter.weights.get(name) if adapter is not None else None

    def _host_adapter(self, lora_id: int) -> LoraAdapter:
        with self._lock:
            adapter = self._host.get(lora_id)
            if adapter is not None:
                self._host.move_to_end(lora_id)
                return adapter
            entry = self._by_id[lora_id]
        # Evicted from the host cache: read again (checked again: the files may have changed).
        adapter = self.read(entry.name, entry.path)
        with self._lock:
            self._cache(lora_id, adapter)
        return adapter

    def _cache(self, lora_id: int, adapter: LoraAdapter) -> None:
        self._host[lora_id] = adapter
        self._host.move_to_end(lora_id)
        while len(self._host) > self.max_cpu:
            self._host.popitem(last=False)
