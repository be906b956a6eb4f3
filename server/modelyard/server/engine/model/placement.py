"""Which decoder layers go on which device when a model is split across several (pure planning, no torch).

The model's modules fall in three groups: what runs before the decoder layers (embeddings) stays on the
first device, so inputs go there; what runs after (final norm, LM head, and position-embedding helpers)
goes on the last device, so logits come from there; the layers are split into contiguous runs, one per
device, in proportion to each device's free memory. The KV cache of a layer lives with that layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Of each device's free memory, the share weights may take; the rest is left for the KV cache and
# activations (the engine sizes its KV budget from what is left after loading).
WEIGHT_SHARE = 0.9


class PlacementError(ValueError):
    """The weights do not fit the devices."""


@dataclass(frozen=True)
class Placement:
    devices: list[str]  # one per device, in order
    layer_devices: list[int]  # device index of each decoder layer

    @property
    def first(self) -> str:
        return self.devices[0]

    @property
    def last(self) -> str:
        return self.devices[-1]

    def device_of_layer(self, layer: int) -> str:
        return self.devices[self.layer_devices[layer]]

    def describe(self) -> str:
        """e.g. `layers 0-39 on cuda:0, layers 40-79 on cuda:1 (embeddings on cuda:0, head on cuda:1)`."""
        runs: list[str] = []
        start = 0
        for i in range(1, len(self.layer_devices) + 1):
            if i == len(self.layer_devices) or self.layer_devices[i] != self.layer_devices[start]:
                span = f"{start}" if i - 1 == start else f"{start}-{i - 1}"
                runs.append(f"layers {span} on {self.devices[self.layer_devices[start]]}")
                start = i
        return f"{', '.join(runs)} (embeddings on {self.first}, head on {self.last})"

    def device_map(self, layers_prefix: str, before: Sequence[str], after: Sequence[str]) -> dict[str, str]:
        """A transformers/accelerate `device_map`: module name -> device."""
        out = dict.fromkeys(before, self.first)
        out.update({f"{layers_prefix}.{i}": self.device_of_layer(i) for i in range(len(self.layer_devices))})
        out.update(dict.fromkeys(after, self.last))
        return out


def plan_layers(
    devices: Sequence[str],
    layer_bytes: Sequence[int],
    free_bytes: Sequence[int] | None = None,
    before_bytes: int = 0,
    after_bytes: int = 0,
) -> Placement:
    """Split `layer_bytes` (one entry per decoder layer) over `devices` in contiguous runs.

    Without `free_bytes` (e.g. CPU, or equal devices) the layers are balanced by size. With it, each
    device gets a share of the weights proportional to its free memory, never more than `WEIGHT_SHARE`
    of it; the first device also holds `before_bytes` (embeddings), the last `after_bytes` (LM head).
    """
    if not devices:
        raise PlacementError("no device to place the model on")
    n = len(devices)
    if free_bytes is not None and len(free_bytes) != n:
        raise ValueError("free_bytes needs one entry per device")
    capacity = [float(f) * WEIGHT_SHARE for f in free_bytes] if free_bytes is not None else [1.0] * n
    total_layers = float(sum(layer_bytes))
    total = total_layers + before_bytes + after_bytes
    if free_bytes is not None and total > sum(capacity):
        raise PlacementError(
            f"the weights ({_gib(total)}) do not fit {n} device(s) with {_gib(sum(capacity))} usable "
            f"({WEIGHT_SHARE:.0%} of {_gib(sum(free_bytes))} free)"
        )
    # Each device's target share of all weights, then minus the fixed parts it must hold.
    weight = sum(capacity)
    target = [total * c / weight for c in capacity]
    target[0] -= before_bytes
    target[-1] -= after_bytes
    layer_devices: list[int] = []
    device, filled = 0, 0.0
    for size in layer_bytes:
        # Move on once this device is at its target, keeping at least one device per remaining layer run.
        while device < n - 1 and filled + size / 2 > target[device]:
            device, filled = device + 1, 0.0
        layer_devices.append(device)
        filled += size
    if free_bytes is not None:
        used = [0.0] * n
        for i, size in enumerate(layer_bytes):
            used[layer_devices[i]] += size
        used[0] += before_bytes
        used[-1] += after_bytes
        for d in range(n):
            if used[d] > capacity[d]:
                raise PlacementError(
                    f"{devices[d]} would hold {_gib(used[d])} of weights but has {_gib(capacity[d])} usable"
                )
    return Placement(list(devices), layer_devices)


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"
