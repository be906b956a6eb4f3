"""Finished spans to an OTLP ``ExportTraceServiceRequest`` (opentelemetry/proto/collector/trace/v1), protobuf
written by hand.

It runs on the exporter thread, but that thread shares the GIL with the request path, so it is kept cheap:
ids go to bytes in one ``bytes.fromhex`` together with their tags, span names and whole attribute fields
(key and value, which repeat from request to request: a method, a path, a model) are encoded once and
looked up after. Building the same message with opentelemetry-proto's classes costs several times more
(docs/observability.md, "What tracing costs"). tests/unit/otlp/test_encode.py decodes the output with those
classes and compares.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from modelyard.otlp.span import AttributeValue, Event, Span


class SpanFields(Protocol):
    """What ``Encoder.fields_of`` reads of a span (a ``Span`` has it; so do request_spans.py's records)."""

    @property
    def span(self) -> int: ...
    @property
    def parent(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> int: ...
    @property
    def start_ns(self) -> int: ...
    @property
    def end_ns(self) -> int: ...
    @property
    def attributes(self) -> Iterable[tuple[str, AttributeValue]]: ...
    @property
    def events(self) -> Sequence[Event] | None: ...
    @property
    def status_code(self) -> int: ...
    @property
    def status_message(self) -> str: ...


_SMALL = [bytes((i,)) for i in range(128)]
_DOUBLE = struct.Struct("<d").pack
_TIMES = struct.Struct("<BQBQ").pack  # start (field 7) and end (field 8), both fixed64
_EVENT_TIME = struct.Struct("<BQ").pack
# trace_id (field 1), span_id (2), parent_span_id (4) as bytes, kind (6) as a varint: ids big-endian.
_IDS = struct.Struct(">BBQQBBQBB").pack
_IDS_PARENT = struct.Struct(">BBQQBBQBBQBB").pack
# fields_of's head of a span: trace id bytes, little-endian span ids, kind and times, in one call.
_HEAD = struct.Struct("<BB16sBBQBBBQBQ").pack
_HEAD_PARENT = struct.Struct("<BB16sBBQBBQBBBQBQ").pack
_LOW64 = (1 << 64) - 1
_CACHE_LIMIT = 4096

# Field tags: (field number << 3) | wire type (0 varint, 1 fixed64, 2 length-delimited).
_SPAN_TRACE_STATE, _SPAN_NAME, _SPAN_ATTRIBUTE, _SPAN_EVENT, _SPAN_STATUS = (
    b"\x1a",
    b"\x2a",
    b"\x4a",
    b"\x5a",
    b"\x7a",
)
_EVENT_NAME, _EVENT_ATTRIBUTE = b"\x12", b"\x1a"
_STATUS_MESSAGE = b"\x12"
_KV_KEY, _KV_VALUE = b"\x0a", b"\x12"
_ANY_STRING, _ANY_ARRAY = b"\x0a", b"\x2a"
_ARRAY_VALUE = b"\x0a"
_TRUE, _FALSE = b"\x10\x01", b"\x10\x00"


def varint(value: int) -> bytes:
    if value < 128:
        return _SMALL[value]
    out = bytearray()
    while value > 127:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# A ScopeSpans.spans field's tag and length for each span body shorter than _SHORT (nearly all are).
_SHORT = 4096
_SPAN_FIELD = [b"\x12" + varint(size) for size in range(_SHORT)]


def _ld(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field."""
    return tag + varint(len(payload)) + payload


def any_value(value: AttributeValue) -> bytes:
    """An ``AnyValue`` message (its body)."""
    kind = type(value)
    if kind is str:
        return _ld(_ANY_STRING, value.encode())  # type: ignore[union-attr]
    if kind is bool:
        return _TRUE if value else _FALSE
    if kind is int:
        number: int = value  # type: ignore[assignment]
        return b"\x18" + varint(number if number >= 0 else number + (1 << 64))
    if kind is float:
        return b"\x21" + _DOUBLE(value)
    if isinstance(value, (list, tuple)):
        items = b"".join(_ld(_ARRAY_VALUE, any_value(item)) for item in value)
        return _ld(_ANY_ARRAY, items)
    return _ld(_ANY_STRING, str(value).encode())  # anything else as its text, as the SDKs do


def key_value(key: str, value: AttributeValue) -> bytes:
    """A ``KeyValue`` message (its body)."""
    return _ld(_KV_KEY, key.encode()) + _ld(_KV_VALUE, any_value(value))


def key_values(tag: bytes, attributes: Iterable[tuple[str, AttributeValue]]) -> bytes:
    return b"".join(_ld(tag, key_value(key, value)) for key, value in attributes)


class Encoder:
    """Encodes batches for one resource (``service.name`` and the rest) and one instrumentation scope."""

    def __init__(self, resource: Mapping[str, AttributeValue], scope: str, scope_version: str = "") -> None:
        resource_body = key_values(b"\x0a", resource.items())
        scope_body = _ld(b"\x0a", scope.encode()) + (
            _ld(b"\x12", scope_version.encode()) if scope_version else b""
        )
        self._resource_field = _ld(b"\x0a", resource_body)  # ResourceSpans.resource
        self._scope_field = _ld(b"\x0a", scope_body)  # ScopeSpans.scope
        self._names: dict[str, bytes] = {}
        self._event_names: dict[str, bytes] = {}
        self._attributes: dict[tuple[str, object, object], bytes] = {}
        self._named: dict[tuple[str, tuple[tuple[str, AttributeValue], ...]], bytes] = {}
        # Span pieces by their callers' keys (``piece``; request_spans.py looks them up itself).
        self.pieces: dict[tuple[object, ...], bytes] = {}

    def request(self, spans: Sequence[Span]) -> bytes:
        """The ``ExportTraceServiceRequest`` carrying ``spans``."""
        return self.request_of([self.span_field(s) for s in spans])

    def request_of(self, span_fields: Sequence[bytes]) -> bytes:
        """The ``ExportTraceServiceRequest`` carrying spans encoded by ``span_field``."""
        # One join with the lengths worked out first: the batch (hundreds of kB in the router) is copied once,
        # not once per enclosing message.
        scope_size = len(self._scope_field) + sum(map(len, span_fields))
        scope_head = b"\x12" + varint(scope_size)
        resource_size = len(self._resource_field) + len(scope_head) + scope_size
        head = [b"\x0a", varint(resource_size), self._resource_field, scope_head, self._scope_field]
        return b"".join([*head, *span_fields])

    def span_field(self, span: Span) -> bytes:
        """The span as a field of ``ScopeSpans`` (``spans``, field 2)."""
        body = self.span(span)
        size = len(body)
        return (_SPAN_FIELD[size] if size < _SHORT else b"\x12" + varint(size)) + body

    def span(self, span: Span) -> bytes:
        """A ``Span`` message (its body). Written for speed (the router's event loop runs it for each span):
        the lookups are inline, and the cached pieces cover a whole field each."""
        trace = span.trace
        if span.parent:
            high, low = trace >> 64, trace & _LOW64
            ids = _IDS_PARENT(0x0A, 16, high, low, 0x12, 8, span.span, 0x22, 8, span.parent, 0x30, span.kind)
        else:
            ids = _IDS(0x0A, 16, trace >> 64, trace & _LOW64, 0x12, 8, span.span, 0x30, span.kind)
        name = self._names.get(span.name) or self._name(span.name)
        parts = [ids, name, _TIMES(0x39, span.start_ns, 0x41, span.end_ns)]
        if span.trace_state:
            parts.append(_ld(_SPAN_TRACE_STATE, span.trace_state.encode()))
        cached = self._attributes.get
        for key, value in span.attributes:
            kind = type(value)
            # The type is in the cache key because ``True == 1 == 1.0``; lists are not hashable.
            encoded = None if kind is list else cached((key, value, kind))
            parts.append(encoded or self._attribute(key, value))
        if span.events:
            parts.extend(self._event(event) for event in span.events)
        if span.status_code:
            status = b"\x18" + _SMALL[span.status_code]
            if span.status_message:
                status = _ld(_STATUS_MESSAGE, span.status_message.encode()) + status
            parts.append(_ld(_SPAN_STATUS, status))
        return b"".join(parts)

    def fields_of(self, trace: bytes, trace_state: str, spans: Iterable[SpanFields]) -> bytes:
        """The spans of one trace (the router's request and its children, request_spans.py) as joined
        ``ScopeSpans.spans`` fields: one call and one loop for all of them. ``trace`` is the trace id's 16
        bytes; span ids are little-endian here (their W3C hex is their little-endian bytes'), so that one
        ``struct`` call packs a span's ids, kind and times together (a message's fields may come in any
        order). The span's name with its attributes is one cached piece: the router's spans repeat a few
        names and values; their callers give each attribute key one type (``True == 1`` as a key)."""
        state = _ld(_SPAN_TRACE_STATE, trace_state.encode()) if trace_state else b""
        named, named_get = self._named, self._named.get
        out: list[bytes] = []
        for span in spans:
            attributes = span.attributes
            key = (span.name, attributes if type(attributes) is tuple else tuple(attributes))
            try:
                static = named_get(key)
            except TypeError:  # a list value: not hashable, not cached
                static = self._name(span.name) + b"".join(self._attribute(k, v) for k, v in key[1])
            if static is None:
                if len(named) >= _CACHE_LIMIT:
                    named.clear()
                static = named[key] = self._name(span.name) + b"".join(
                    self._attribute(k, v) for k, v in key[1]
                )
            if span.parent:
                body = _HEAD_PARENT(10, 16, trace, 0x12, 8, span.span, 0x22, 8, span.parent, 0x30, span.kind,
                                    0x39, span.start_ns, 0x41, span.end_ns) + static  # fmt: skip
            else:
                body = _HEAD(10, 16, trace, 0x12, 8, span.span, 0x30, span.kind,
                             0x39, span.start_ns, 0x41, span.end_ns) + static  # fmt: skip
            if state:
                body += state
            if span.events:
                body += b"".join(self._event(event) for event in span.events)
            if span.status_code:
                status = b"\x18" + _SMALL[span.status_code]
                if span.status_message:
                    status = _ld(_STATUS_MESSAGE, span.status_message.encode()) + status
                body += _ld(_SPAN_STATUS, status)
            size = len(body)
            out.append((_SPAN_FIELD[size] if size < _SHORT else b"\x12" + varint(size)) + body)
        return b"".join(out)

    def piece(
        self,
        key: tuple[object, ...] | None,
        name: str,
        kind: int,
        attributes: Iterable[tuple[str, AttributeValue]],
        trace_state: str,
        rest: int,
    ) -> bytes:
        """The start of a ``ScopeSpans.spans`` field: its tag and length (of this piece and the ``rest``
        bytes that follow it: ids, times, events, status), the span's name, kind, attributes and trace
        state; kept in ``pieces`` under ``key`` unless it is None."""
        body = [self._name(name), b"\x30", _SMALL[kind]]
        body.extend(self._attribute(k, v) for k, v in attributes)
        if trace_state:
            body.append(_ld(_SPAN_TRACE_STATE, trace_state.encode()))
        joined = b"".join(body)
        piece = b"\x12" + varint(len(joined) + rest) + joined
        if key is not None:
            if len(self.pieces) >= _CACHE_LIMIT:  # unique values (ids) must not grow it for ever
                self.pieces.clear()
            self.pieces[key] = piece
        return piece

    def tail(self, events: Sequence[Event] | None, status_code: int, status_message: str) -> bytes:
        """A span's events and status fields."""
        parts = [self._event(event) for event in events or ()]
        if status_code:
            status = b"\x18" + _SMALL[status_code]
            if status_message:
                status = _ld(_STATUS_MESSAGE, status_message.encode()) + status
            parts.append(_ld(_SPAN_STATUS, status))
        return b"".join(parts)

    def _name(self, name: str) -> bytes:
        encoded = self._names.get(name)
        if encoded is None:
            if len(self._names) >= _CACHE_LIMIT:
                self._names.clear()
            encoded = self._names[name] = _ld(_SPAN_NAME, name.encode())
        return encoded

    def _attribute(self, key: str, value: AttributeValue) -> bytes:
        """A span's attribute field; the type is in the cache key because ``True == 1 == 1.0``."""
        if type(value) is list:
            return _ld(_SPAN_ATTRIBUTE, key_value(key, value))
        cache_key = (key, value, type(value))
        encoded = self._attributes.get(cache_key)
        if encoded is None:
            if len(self._attributes) >= _CACHE_LIMIT:  # unique values (ids) must not grow it for ever
                self._attributes.clear()
            encoded = self._attributes[cache_key] = _ld(_SPAN_ATTRIBUTE, key_value(key, value))
        return encoded

    def _event(self, event: Event) -> bytes:
        at, name, attributes = event
        encoded = self._event_names.get(name)
        if encoded is None:
            if len(self._event_names) >= _CACHE_LIMIT:
                self._event_names.clear()
            encoded = self._event_names[name] = _ld(_EVENT_NAME, name.encode())
        body = _EVENT_TIME(0x09, at) + encoded
        if attributes:
            body += key_values(_EVENT_ATTRIBUTE, attributes)
        return _ld(_SPAN_EVENT, body)
