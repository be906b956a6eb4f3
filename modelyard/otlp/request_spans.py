"""One request's spans, recorded compactly and encoded later in bulk: the router's recorder.

The router opens a SERVER span per request and a few children inside it (the hold, each upstream attempt,
the relay). Recording them is the tracing router's main cost: a few hundred interpreter operations per
request, more than half of them object creation, calls and the garbage collector's work on what they
allocate (docs/observability.md, "What tracing costs"). So a request is one ``RequestSpans`` and nothing
else is an object of ours:

- the request keeps its method and path, and the attributes set later, as they are: the span's name and
  attributes are made when it is encoded, from a cached piece;
- a child is a list in its request's ``children`` (name, the caller's keyword arguments as attributes, id,
  parent, start, end, error), opened by ``child()``. The request itself is the child's context manager:
  ``with`` blocks nest, so its ``__exit__`` ends the innermost open child, or the request when none is open
  (the proxy's hot call sites call ``end_child`` and ``end`` instead: a ``with`` makes two method objects
  more per span);
- a child's span id is the request's, xor a constant of the child's position (distinct, non-zero, unique in
  the trace): no random draw per child. A new trace's id and its request's span id are one draw;
- an ended request goes to the exporter as it is (``sink(request, count)``) and is encoded there with the
  rest of its batch, in one hot loop (``fields``): per span one cached piece (field tag and length, name,
  kind, attributes, trace state) and one ``struct`` call for its ids and times;
- the trace id's hex is formatted once per request (or taken from the caller's ``traceparent``), for the
  pod's ``traceparent`` and the access line alike.

Children nest as ``with`` blocks do, within the request's task; a child that ends after its request is not
recorded. The sampling decision is the request's: an unsampled request still gives its children ids, so the
pod is told who its parent is and that it is not sampled.
"""

from __future__ import annotations

import random
import struct
import time
from collections.abc import Callable, Mapping, MutableMapping
from contextvars import ContextVar
from types import TracebackType
from typing import Any

from modelyard.otlp import propagation
from modelyard.otlp.encode import Encoder
from modelyard.otlp.sampling import Sampler
from modelyard.otlp.span import ERROR, INTERNAL, SERVER, UNSET, AttributeValue, Event
from modelyard.otlp.span_queue import Pending

_now = time.time_ns
_bits = random.getrandbits
_unhex = bytes.fromhex
_new = object.__new__
_LOW64 = (1 << 64) - 1

# Child k's span id is the request's xor (k * _ODD mod 2**64): multiplying by an odd constant is one-to-one
# modulo 2**64, so the mixes are distinct for every k and never 0, and the xor keeps the ids distinct from
# the request's and from each other.
_ODD = 0x9E3779B97F4A7C15

# A span's ids and times after its cached piece: trace_id (field 1), span_id (2), parent_span_id (4),
# start (7) and end (8), each with its tag (two-byte tags as one little-endian ``H``). Span ids are packed
# little-endian: their W3C hex is their little-endian bytes'.
_HEAD = struct.Struct("<H16sHQHQBQBQ")
_HEAD_ROOT = struct.Struct("<H16sHQBQBQ")  # no parent
_PACK, _PACK_ROOT = _HEAD.pack, _HEAD_ROOT.pack
_T_TRACE, _T_SPAN, _T_PARENT, _T_START, _T_END = 0x100A, 0x0812, 0x0822, 0x39, 0x41

# Where ended requests go (the loop exporter's ``add_spans``), with how many spans each holds.
Sink = Callable[["RequestSpans", int], None]
# A child: [name, attributes, span id, parent's position (0: the request), start, end (0: open), error].
_Child = list[Any]


class RequestSpans:
    """The request's SERVER span and its children. ``with`` it to end it on the way out (an exception marks
    it ERROR); ``end()`` ends one used without ``with``. ``with request.child(name, attributes)`` is a child
    of the innermost open span."""

    # Set on an instance only when present (its __dict__ is made then).
    trace_state = ""
    status_code = UNSET
    status_message = ""
    events: list[Event] | None = None

    __slots__ = (
        "__dict__",
        "_sink",
        "children",
        "current",
        "end_ns",
        "extra",
        "method",
        "parent",
        "path",
        "sampled",
        "span",
        "start_ns",
        "trace_id",
    )
    _sink: Sink
    children: list[_Child] | None  # in the order opened; None once encoded
    current: int  # the innermost open span: 0 the request, k its k-th child
    end_ns: int
    extra: tuple[tuple[str, AttributeValue], ...]  # set_attribute's, after method and path
    method: str
    parent: int
    path: str
    sampled: bool
    span: int
    start_ns: int
    trace_id: str  # W3C hex, formatted once: the pod's traceparent and the access line share it

    @property
    def name(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def attributes(self) -> list[tuple[str, AttributeValue]]:
        return [("http.request.method", self.method), ("url.path", self.path), *self.extra]

    @property
    def span_id(self) -> str:
        return span_hex(self.span)

    @property
    def parent_id(self) -> str | None:
        return span_hex(self.parent) if self.parent else None

    @property
    def current_id(self) -> str:
        """The innermost open span's id (W3C hex)."""
        return span_hex(self._current_span())

    def _current_span(self) -> int:
        current, children = self.current, self.children
        return children[current - 1][2] if current and children is not None else self.span

    def inject(self, headers: MutableMapping[str, str]) -> None:
        """Make the innermost open span the parent of whoever gets ``headers`` (W3C ``traceparent``)."""
        span = self._current_span()
        headers["traceparent"] = (
            f"00-{self.trace_id}-{span.to_bytes(8, 'little').hex()}-{'01' if self.sampled else '00'}"
        )
        if self.trace_state:
            headers["tracestate"] = self.trace_state

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        self.extra += ((key, value),)

    def set_status(self, code: int, message: str = "") -> None:
        self.status_code = code
        self.status_message = message if code == ERROR else ""

    def child(self, name: str, attributes: Mapping[str, AttributeValue]) -> RequestSpans:
        """Open a child of the innermost open span (``with`` the returned request to end it). Its
        attributes: the mapping given (set each key once)."""
        children = self.children
        assert children is not None, "a child of an ended request"
        position = len(children) + 1
        span = self.span ^ (position * _ODD & _LOW64) or 1
        children.append([name, attributes, span, self.current, _now(), 0, None])
        self.current = position
        return self

    def ended_child(self, name: str, attributes: Mapping[str, AttributeValue], start_ns: int) -> None:
        """Record a child of the innermost open span that began at ``start_ns`` and ends now: for a step
        that cannot fail, without the two calls of a ``with``."""
        children = self.children
        if children is None or self.end_ns:
            return
        position = len(children) + 1
        span = self.span ^ (position * _ODD & _LOW64) or 1
        children.append([name, attributes, span, self.current, start_ns, _now(), None])

    def __enter__(self) -> RequestSpans:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.current:
            self.end_child(exc)
        else:
            self.end(exc)

    def end_child(self, exc: BaseException | None = None) -> None:
        """End the innermost open child (an exception marks it ERROR): ``with``'s exit for a call site that
        ends it itself, without the two method objects a ``with`` makes."""
        current = self.current
        if not current:
            return
        children = self.children
        if children is None:  # the request was ended and encoded first: not recorded
            self.current = 0
            return
        record = children[current - 1]
        self.current = record[3]
        if not self.end_ns:
            record[5] = _now()
            if exc is not None:
                record[6] = (_error_message(exc), [_exception(exc)])

    def end(self, exc: BaseException | None = None) -> None:
        """End the request's span (an exception marks it ERROR) and hand the request to the sink (once)."""
        if self.end_ns:
            return
        if exc is not None:
            self.events = [_exception(exc)]
            self.set_status(ERROR, _error_message(exc))
        self.end_ns = _now()
        if self.sampled:
            self._sink(self, len(self.children) + 1)  # type: ignore[arg-type]

    def fields(self, encoder: Encoder) -> bytes:
        """The request's spans, children first, as ``ScopeSpans.spans`` fields (the exporter calls it when
        it sends the batch). Each span is a cached piece (``Encoder.piece``: the field's tag and length,
        name, kind, attributes, trace state) and its ids and times, packed in one call."""
        children = self.children or []
        self.children = None
        trace = _unhex(self.trace_id)
        state = self.trace_state
        root = self.span
        pieces = encoder.pieces
        get = pieces.get
        out: list[bytes] = []
        key: tuple[object, ...] | None  # a piece's key in the encoder's cache; None: not cacheable
        for name, attributes, span, parent_at, start, end, error in children:
            if not end:
                continue  # still open when the request ended
            parent = children[parent_at - 1][2] if parent_at else root
            if error is None:
                # Keys, then values (their count tells them apart): no pair allocated per attribute.
                key = (name, state, *attributes, *attributes.values())
                try:
                    piece = get(key)
                except TypeError:  # a list value: not hashable, not cached
                    piece = key = None
                if piece is None:
                    piece = encoder.piece(key, name, INTERNAL, attributes.items(), state, _HEAD.size)
                head = _PACK(_T_TRACE, trace, _T_SPAN, span, _T_PARENT, parent, _T_START, start, _T_END, end)
                out += (piece, head)
            else:
                message, events = error
                tail = encoder.tail(events, ERROR, message)
                piece = encoder.piece(None, name, INTERNAL, attributes.items(), state, _HEAD.size + len(tail))
                head = _PACK(_T_TRACE, trace, _T_SPAN, span, _T_PARENT, parent, _T_START, start, _T_END, end)
                out += (piece, head, tail)
        parent = self.parent
        if parent:
            head = _PACK(_T_TRACE, trace, _T_SPAN, root, _T_PARENT, parent, _T_START, self.start_ns, _T_END,
                         self.end_ns)  # fmt: skip
        else:
            head = _PACK_ROOT(_T_TRACE, trace, _T_SPAN, root, _T_START, self.start_ns, _T_END, self.end_ns)
        if self.status_code or self.events:
            tail = encoder.tail(self.events, self.status_code, self.status_message)
            size = len(head) + len(tail)
            out += (encoder.piece(None, self.name, SERVER, self.attributes, state, size), head, tail)
        else:
            key = (None, self.method, self.path, state, len(head), *self.extra)
            try:
                piece = get(key)
            except TypeError:  # a list value: not hashable, not cached
                piece = key = None
            if piece is None:
                piece = encoder.piece(key, self.name, SERVER, self.attributes, state, len(head))
            out += (piece, head)
        return b"".join(out)


def _exception(exc: BaseException) -> Event:
    """An ``exception`` event (type and message, per the semantic conventions). No stack trace: formatting
    one costs more than the rest of the span."""
    return (
        _now(),
        "exception",
        [("exception.type", type(exc).__qualname__), ("exception.message", str(exc))],
    )


def span_hex(span: int) -> str:
    """A span id's W3C hex: its little-endian bytes' (``fields`` packs span ids little-endian)."""
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
        # Made field by field, without __init__: a call less per request.
        spans: RequestSpans = _new(RequestSpans)
        spans.start_ns = _now()
        spans._sink = self.sink
        spans.method = method
        spans.path = path
        spans.children = []
        spans.current = spans.end_ns = 0
        spans.extra = ()
        caller = None
        if headers:  # propagation.extract, inline: a call less per request
            traceparent = headers.get("traceparent")
            if traceparent:
                caller = propagation.parse_traceparent(traceparent, headers.get("tracestate"))
        if caller is None:
            bits = _bits(192)  # trace and span id from one draw
            trace = bits >> 64 or 1
            spans.trace_id = trace.to_bytes(16, "big").hex()  # a fifth of f"{trace:032x}"'s cost
            spans.span = bits & _LOW64 or 1
            spans.parent = 0
            spans.sampled = self._new_traces_sampled or self.sampler.sample(trace, None)
        else:
            spans.trace_id = caller.trace_id
            spans.span = _bits(64) or 1
            spans.parent = int.from_bytes(_unhex(caller.span_id), "little")
            spans.sampled = self.sampler.sample(int(caller.trace_id, 16), caller.sampled)
            if caller.trace_state:
                spans.trace_state = caller.trace_state
        if self._set_current is not None:
            self._set_current(spans)
        return spans


def encode_fields(items: list[bytes | Pending], encoder: Encoder) -> list[bytes]:
    """A batch's items as ``ScopeSpans.spans`` fields: records are encoded, spans encoded already pass
    through (the loop exporter's loop over a batch)."""
    return [item if type(item) is bytes else item.fields(encoder) for item in items]  # type: ignore[union-attr]


def fields_encoder() -> Callable[[list[bytes | Pending], Encoder], list[bytes]]:
    """The compiled ``encode_fields`` where it was built (it encodes compiled records without a method call
    each), else this module's."""
    try:
        from modelyard.otlp._request_spans import encode_fields as compiled
    except ImportError:  # no C compiler where the package was installed
        return encode_fields
    return compiled


def recorder_class() -> type[RequestRecorder]:
    """The compiled recorder (``_request_spans.c``: the same records and bytes for a fraction of the
    instructions) where it was built, else this module's."""
    try:
        from modelyard.otlp._request_spans import RequestRecorder as Compiled
    except ImportError:  # no C compiler where the package was installed
        return RequestRecorder
    return Compiled
