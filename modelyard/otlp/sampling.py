"""The standard samplers, chosen by ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG`` as the SDKs do:
``always_on``, ``always_off``, ``traceidratio`` and their ``parentbased_*`` forms (the default,
``parentbased_always_on``: follow a parent's sampled flag, sample every new trace)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

log = logging.getLogger("modelyard.otlp")

_MAX_BOUND = (1 << 64) - 1
DEFAULT = "parentbased_always_on"


@dataclass(frozen=True, slots=True)
class Sampler:
    """Whether a span is recorded and exported. ``ratio`` applies to new traces (and, without a parent
    rule, to every span): 1.0 keeps all, 0.0 none. ``parent_based``: a span with a parent follows its
    ``sampled`` flag."""

    name: str
    ratio: float = 1.0
    parent_based: bool = False
    bound: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "bound", round(self.ratio * _MAX_BOUND))

    def sample(self, trace: int, parent_sampled: bool | None) -> bool:
        """``trace``: the trace id (an int); ``parent_sampled``: the parent's flag, None for a new trace."""
        if self.parent_based and parent_sampled is not None:
            return parent_sampled
        if self.ratio >= 1.0:
            return True
        if self.ratio <= 0.0:
            return False
        # As the SDKs decide: the trace id's lower 64 bits against the ratio, so every process that sees
        # this trace decides alike.
        return (trace & _MAX_BOUND) < self.bound


def sampler_from(env: Mapping[str, str]) -> Sampler:
    name = (env.get("OTEL_TRACES_SAMPLER") or DEFAULT).strip().lower()
    parent_based = name.startswith("parentbased_")
    root = name.removeprefix("parentbased_")
    if root == "always_on":
        return Sampler(name, 1.0, parent_based)
    if root == "always_off":
        return Sampler(name, 0.0, parent_based)
    if root == "traceidratio":
        return Sampler(name, _ratio(env.get("OTEL_TRACES_SAMPLER_ARG")), parent_based)
    log.warning("unknown OTEL_TRACES_SAMPLER %r: using %s", name, DEFAULT)
    return Sampler(DEFAULT, 1.0, True)


def _ratio(arg: str | None) -> float:
    if arg is None or not arg.strip():
        return 1.0
    try:
        ratio = float(arg)
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:
        log.warning("OTEL_TRACES_SAMPLER_ARG %r is not a ratio in [0, 1]: using 1.0", arg)
        return 1.0
    return ratio
