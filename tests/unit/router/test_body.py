"""Request body routing fields and `usage` scanning (JSON bodies and SSE streams)."""

from __future__ import annotations

import json

import pytest

from modelyard.router.body import SseUsageScanner, Usage, parse_body, scan_usage
from modelyard.router.errors import RouterError


def test_parse_body_reads_model_and_stream() -> None:
    routed = parse_body(b'{"model": "m", "stream": true, "messages": []}')
    assert (routed.model, routed.stream) == ("m", True)
    assert parse_body(b'{"model": "m", "stream": "yes"}').stream is False


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "m", "messages": [{"role": "user", "content": "caf\xc3\xa9 \\ud83d\\ude00"}]}',
        b'\n {"model": "m", "n": 123456789012345678901234567890, "t": 1e5, "x": -0}\r\n',
        b'{"model": "m", "temperature": NaN, "top_p": Infinity}',  # only json.loads takes these
        b'\xef\xbb\xbf{"model": "m"}',  # a BOM: only json.loads takes it
        '{"model": "m"}'.encode("utf-16"),
        b'{"model": "m", "model": "last"}',
    ],
)
def test_a_body_parses_to_what_json_loads_makes_of_it(raw: bytes) -> None:
    assert repr(parse_body(raw).fields) == repr(json.loads(raw))  # repr: NaN equals nothing


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b"", None),
        (b"not json", None),
        (b"[1, 2]", None),
        (b'{"stream": true}', "model"),
        (b'{"model": 3}', "model"),
        (b'{"model": ""}', "model"),
        (b"\xff\xfe", None),
    ],
)
def test_bad_bodies_are_400_invalid_request(raw: bytes, param: str | None) -> None:
    with pytest.raises(RouterError) as info:
        parse_body(raw)
    assert info.value.status == 400
    assert info.value.type == "invalid_request_error"
    assert info.value.param == param


def test_scan_usage_of_a_json_body() -> None:
    body = json.dumps(
        {
            "choices": [{"text": 'the word "usage" in text'}],
            "usage": {
                "prompt_tokens": 11,
                "completion_tokens": 4,
                "total_tokens": 15,
                "prompt_tokens_details": {"cached_tokens": 2},
            },
        }
    ).encode()
    assert scan_usage(body) == Usage(11, 4)
    assert scan_usage(b'{"data": [], "usage": {"prompt_tokens": 3, "total_tokens": 3}}') == Usage(3, 0)
    assert scan_usage(b'{"choices": []}') is None
    assert scan_usage(b'{"usage": null}') is None


def _event(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def test_sse_scanner_finds_usage_in_the_final_chunk() -> None:
    events = [_event({"choices": [{"delta": {"content": "x"}}], "usage": None}) for _ in range(3)]
    events.append(_event({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3}}))
    events.append(b"data: [DONE]\n\n")
    scanner = SseUsageScanner()
    for e in events:
        scanner.feed(e)
    assert scanner.usage == Usage(9, 3)


def test_sse_scanner_handles_a_usage_object_split_across_chunks() -> None:
    stream = (
        _event({"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 5}}) + b"data: [DONE]\n\n"
    )
    cut = stream.index(b"prompt_tokens") + 5
    scanner = SseUsageScanner()
    scanner.feed(stream[:cut])
    assert scanner.usage is None
    scanner.feed(stream[cut:])
    assert scanner.usage == Usage(12, 5)


def test_sse_scanner_ignores_the_word_usage_inside_content() -> None:
    scanner = SseUsageScanner()
    scanner.feed(_event({"choices": [{"delta": {"content": 'say "usage": {"prompt_tokens": 1}'}}]}))
    assert scanner.usage is None


def test_sse_scanner_without_usage_reports_none() -> None:
    scanner = SseUsageScanner()
    scanner.feed(_event({"choices": [{"delta": {"content": "hi"}}]}) + b"data: [DONE]\n\n")
    assert scanner.usage is None
