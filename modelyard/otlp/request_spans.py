"""One request's spans, recorded compactly and encoded later in bulk: the router's recorder.

The router opens a SERVER span per request and a few children inside it (the hold, each upstream attempt,
the relay). With one ``Span`` object each, every child cost a context-variable switch in and out, an object
of fifteen slots and a list of attributes, and each span was encoded as it ended. That code ran cold: the
router's own work between two requests evicts it from the CPU's caches, and a py-spy profile of the router
put several times the micro-benchmark's cost on it (docs/observability.md, "What tracing costs"). Here:

- the request is one ``RequestSpans``; the caller keeps it where its children can find it (the router: in
  the context variable its access line reads anyway), and the request keeps the innermost open span's id,
  so entering or leaving a child is two attribute writes;
- a child keeps the caller's keyword arguments as its attributes (no list of pairs) and, once ended, sits
  in its request's list;
- an ended request goes to the exporter as it is (``sink(request, count)``) and is encoded there with the
  rest of its batch, in one hot loop (``fields``, ``Encoder.fields_of``: the trace id packed once per
  request, cached bytes for names and attribute fields);
- the trace id's hex is formatted once per request (or taken from the caller's ``traceparent``), for the
  pod's ``traceparent`` and the access line alike.

Children nest as ``with`` blocks do, within the request's task; a child that ends after its request is not
recorded. The sampling decision is the request's: an unsampled request still gives its children ids, so the
pod is told who its parent is and that it is not sampled.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from contextvars import ContextVar
from types import TracebackType
from typing import Any

from modelyard.otlp import propagation
from modelyard.otlp.encode import Encoder, SpanFields
from modelyard.otlp.sampling import Sampler
from modelyard.otlp.span import ERROR, INTERNAL, SERVER, UNSET, AttributeValue, Event

_now = time.time_ns
_bits = random.getrandbits
_LOW64 = (1 << 64) - 1

# Where ended requests go (the loop exporter's ``add_spans``), with how many spans each holds.
Sink = Callable[["RequestSpans", int], None]


class RequestSpans:
    """The request's SERVER span and its ended children. ``with`` it to end it on the way out (an exception
    marks it ERROR); ``end()`` ends one used without ``with``."""

    kind = SERVER
    # Set on an instance only when it ends with an error (the instance's __dict__ is made then).
    status_code = UNSET
    status_message = ""
    events: list[Event] | None = None

    __slots__ = (
        "__dict__",
        "_sink",
        "attributes",
        "children",
        "current",
        "end_ns",
        "name",
        "parent",
        "sampled",
        "span",
        "start_ns",
        "trace",
        "trace_id",
        "trace_state",
    )

    def __init__(
        self,
        sink: Sink,
        trace: int,
        span: int,
        parent: int,
        sampled: bool,
        name: str,
        attributes: list[tuple[str, AttributeValue]],
        trace_state: str = "",
        trace_id: str = "",
    ) -> None:
        self._sink = sink
        self.trace = trace
        # W3C hex, formatted once: the pod's traceparent and the access line share it.
        self.trace_id = trace_id or f"{trace:032x}"
        self.span = span
        self.parent = parent
        self.sampled = sampled
        self.name = name
        self.attributes = attributes
        self.trace_state = trace_state
        self.start_ns = _now()
        self.end_ns = 0
        self.current = span  # the innermost open span: a new child's parent, the pod's parent
        self.children: list[ChildSpan | _ErrorChild] | None = []  # ended, in order; None once encoded

    @property
    def span_id(self) -> str:
        return span_hex(self.span)

    @property
    def parent_id(self) -> str | None:
        return span_hex(self.parent) if self.parent else None

    def inject(self, headers: MutableMapping[str, str]) -> None:
        """Make the innermost open span the parent of whoever gets ``headers`` (W3C ``traceparent``)."""
        flags = "-01" if self.sampled else "-00"
        headers["traceparent"] = (
            "00-" + self.trace_id + "-" + self.current.to_bytes(8, "little").hex() + flags
        )
        if self.trace_state:
            headers["tracestate"] = self.trace_state

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        self.attributes.append((key, value))

    def set_status(self, code: int, message: str = "") -> None:
        self.status_code = code
        self.status_message = message if code == ERROR else ""

    def __enter__(self) -> RequestSpans:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None:
            self.events = [_exception(exc)]
            self.set_status(ERROR, _error_message(exc))
        self.end()

    def end(self) -> None:
        """End the request's span and hand the request to the sink (once)."""
        if self.end_ns:
            return
        self.end_ns = _now()
        if self.sampled:
            self._sink(self, len(self.children) + 1)  # type: ignore[arg-type]

    def fields(self, encoder: Encoder) -> bytes:
        """The request's spans, children first, as ``ScopeSpans.spans`` fields (the exporter calls it when
        it sends the batch)."""
        spans: list[SpanFields] = self.children or []  # type: ignore[assignment]
        spans.append(self)
        # Each child refers to its request: dropping the list breaks the cycle, so the request's objects
        # are freed now, by reference counts, not later by the garbage collector.
        self.children = None
        return encoder.fields_of(self.trace.to_bytes(16, "big"), self.trace_state, spans)


class ChildSpan:
    """An INTERNAL span inside a request. Its attributes: the mapping given (set each key once), then those
    set with ``set_attribute``. Status and events are the class's (none) unless it ended with an
    exception: then its record is an ``_ErrorChild``."""

    kind = INTERNAL
    status_code = UNSET
    status_message = ""
    events: list[Event] | None = None

    __slots__ = ("attributes", "end_ns", "name", "parent", "request", "span", "start_ns")

    def __init__(self, request: RequestSpans, name: str, attributes: Mapping[str, AttributeValue]) -> None:
        self.request = request
        self.span = _bits(64) or 1
        self.parent = request.current
        self.name = name
        self.attributes: Iterable[tuple[str, AttributeValue]] = attributes.items()
        self.start_ns = _now()

    @property
    def span_id(self) -> str:
        return span_hex(self.span)

    @property
    def parent_id(self) -> str:
        return span_hex(self.parent)

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        self.attributes = [*self.attributes, (key, value)]

    def __enter__(self) -> ChildSpan:
        self.request.current = self.span
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        request = self.request
        request.current = self.parent
        self.end_ns = _now()
        if request.sampled and not request.end_ns:
            request.children.append(self if exc is None else _ErrorChild(self, exc))  # type: ignore[union-attr]


class _ErrorChild:
    """A child that ended with an exception: its fields, an ``exception`` event and ERROR status."""

    kind = INTERNAL
    status_code = ERROR

    def __init__(self, child: ChildSpan, exc: BaseException) -> None:
        self.span, self.parent, self.name = child.span, child.parent, child.name
        self.start_ns, self.end_ns, self.attributes = child.start_ns, child.end_ns, child.attributes
        self.events = [_exception(exc)]
        self.status_message = _error_message(exc)


def _exception(exc: BaseException) -> Event:
    """An ``exception`` event (type and message, per the semantic conventions). No stack trace: formatting
    one costs more than the rest of the span."""
    return (
        _now(),
        "exception",
        [("exception.type", type(exc).__qualname__), ("exception.message", str(exc))],
    )


def span_hex(span: int) -> str:
    """A span id's W3C hex: its little-endian bytes' (``Encoder.fields_of`` packs span ids little-endian)."""
    return span.to_bytes(8, "little").hex()


def _error_message(exc: BaseException) -> str:
    return f"{type(exc).__qualname__}: {exc}"


class RequestRecorder:
    """Starts requests' span records; ended requests go to ``sink`` (the loop exporter's ``add_spans``,
    or a list in tests, which encode them with ``fields``). With ``current``, each new request is set in
    that context variable, where its children are looked up (the router's access-line variable)."""

    def __init__(self, sampler: Sampler, sink: Sink, current: ContextVar[Any] | None = None) -> None:
        self.sampler = sampler
        self.sink = sink
        self._set_current = None if current is None else current.set
        self._new_traces_sampled = sampler.ratio >= 1.0  # always_on and parentbased_always_on

    def request(self, method: str, path: str, headers: Mapping[str, str] | None) -> RequestSpans:
        """The request's SERVER span (``METHOD /path``), continuing the caller's W3C ``traceparent`` and
        ``tracestate`` or starting a trace."""
        attributes: list[tuple[str, AttributeValue]] = [("http.request.method", method), ("url.path", path)]
        caller = None
        if headers:  # propagation.extract, inline: a call less per request
            traceparent = headers.get("traceparent")
            if traceparent:
                caller = propagation.parse_traceparent(traceparent, headers.get("tracestate"))
        if caller is None:
            bits = _bits(192)  # trace and span id from one draw
            trace = bits >> 64 or 1
            sampled = self._new_traces_sampled or self.sampler.sample(trace, None)
            spans = RequestSpans(
                self.sink, trace, bits & _LOW64 or 1, 0, sampled, f"{method} {path}", attributes
            )
        else:
            trace = int(caller.trace_id, 16)
            parent = int.from_bytes(bytes.fromhex(caller.span_id), "little")
            spans = RequestSpans(
                self.sink, trace, _bits(64) or 1, parent, self.sampler.sample(trace, caller.sampled),
                f"{method} {path}", attributes, caller.trace_state, caller.trace_id,
            )  # fmt: skip
        if self._set_current is not None:
            self._set_current(spans)
        return spans
