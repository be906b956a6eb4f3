"""Starting spans: ids, parents and the sampling decision; finished sampled spans go to ``on_end``."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, MutableMapping

from modelyard.otlp import propagation
from modelyard.otlp.sampling import Sampler
from modelyard.otlp.span import INTERNAL, AttributeValue, Span, SpanContext, current_span

_bits = random.getrandbits

_CURRENT = SpanContext("", "", False)  # a marker: "the current span is the parent"


class Tracer:
    """``on_end`` gets each sampled span when it ends (the batch exporter's ``add``, or a list in tests)."""

    def __init__(
        self, sampler: Sampler, on_end: Callable[[Span], None], close: Callable[[], None] | None = None
    ) -> None:
        self.sampler = sampler
        self.on_end = on_end
        self._close = close
        self._follow_parent = sampler.parent_based  # a child takes its parent's flag: no call to decide

    def start_span(
        self,
        name: str,
        kind: int = INTERNAL,
        attributes: Iterable[tuple[str, AttributeValue]] | None = None,
        parent: Span | SpanContext | None = _CURRENT,
        start_ns: int | None = None,
    ) -> Span:
        """A started span, the child of ``parent`` (by default the current span; None: a new trace)."""
        if parent is _CURRENT:
            parent = current_span.get()
        recorded = [] if attributes is None else list(attributes)
        if parent is None:
            trace = _bits(128) or 1
            sampled = self.sampler.sample(trace, None)
            return Span(trace, _bits(64) or 1, 0, name, kind, sampled, self.on_end, recorded, "", start_ns)
        if isinstance(parent, Span):
            trace, parent_span = parent.trace, parent.span
        else:  # another process's span, from its traceparent
            trace, parent_span = int(parent.trace_id, 16), int(parent.span_id, 16)
        sampled = parent.sampled if self._follow_parent else self.sampler.sample(trace, parent.sampled)
        return Span(
            trace, _bits(64) or 1, parent_span, name, kind, sampled, self.on_end,
            recorded, parent.trace_state, start_ns,
        )  # fmt: skip

    @staticmethod
    def extract(headers: Mapping[str, str] | None) -> SpanContext | None:
        """The caller's context from its W3C ``traceparent``/``tracestate`` headers (None: start a trace)."""
        return propagation.extract(headers)

    @staticmethod
    def inject(headers: MutableMapping[str, str], span: Span | None = None) -> None:
        """Make ``span`` (the current span by default) the parent of whoever gets ``headers``."""
        if span is None:
            span = current_span.get()
        if span is not None:
            propagation.inject(span, headers)

    def shutdown(self) -> None:
        """Export what is still batched and stop the exporter thread."""
        if self._close is not None:
            self._close()
            self._close = None
