"""W3C Trace Context (https://www.w3.org/TR/trace-context/): ``traceparent`` and ``tracestate`` in and out."""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping

from modelyard.otlp.span import Span, SpanContext

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16
_KEY = r"(?:[a-z0-9][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13})"
_VALUE = r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
_MEMBER = re.compile(rf"({_KEY})=({_VALUE})")
_MAX_MEMBERS = 32


def parse_traceparent(value: str | None, tracestate: str | None = None) -> SpanContext | None:
    """The remote parent a ``traceparent`` names, or None when it is missing or invalid (start a trace)."""
    if not value:
        return None
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    # Version 00 has exactly four fields; a later version may append more, which a 00 parser ignores.
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    state = parse_tracestate(tracestate) if tracestate else ""
    return SpanContext(trace_id, span_id, bool(int(flags, 16) & 1), state)


def parse_tracestate(value: str) -> str:
    """The ``tracestate`` list, normalised (``k=v,k=v``), or "" when it is invalid: then it is dropped whole,
    as the spec asks, rather than passed on half-understood."""
    members: list[str] = []
    keys: set[str] = set()
    for raw in value.split(","):
        member = raw.strip(" \t")
        if not member:
            continue
        match = _MEMBER.fullmatch(member)
        if match is None or match.group(1) in keys:
            return ""
        keys.add(match.group(1))
        members.append(member)
    return ",".join(members) if len(members) <= _MAX_MEMBERS else ""


def extract(headers: Mapping[str, str] | None) -> SpanContext | None:
    """The caller's context from request headers (any mapping with case-insensitive or lowercase keys)."""
    if not headers:
        return None
    traceparent = headers.get("traceparent")
    return parse_traceparent(traceparent, headers.get("tracestate")) if traceparent else None


def inject(span: Span, headers: MutableMapping[str, str]) -> None:
    """Make ``span`` the parent of whatever receives ``headers``."""
    headers["traceparent"] = span.traceparent
    if span.trace_state:
        headers["tracestate"] = span.trace_state
