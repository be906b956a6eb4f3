"""The router's JSON log lines (access lines spliced in as fields, a worker's index) and their batching."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from modelyard.router.logs import AccessLines, BatchedLineHandler, JsonFormatter, access_trace


def _record(name: str, msg: str, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError as err:
            exc_info = (ValueError, err, err.__traceback__)
    return logging.LogRecord(name, logging.INFO, __file__, 1, msg, None, exc_info)


def test_an_access_line_is_one_flat_json_object() -> None:
    access = json.dumps({"request_id": "r1", "status": 200, "model": "m", "error": None})
    line = JsonFormatter(worker=1).format(_record("modelyard.router.access", access))
    doc = json.loads(line)
    assert list(doc)[:4] == ["ts", "level", "logger", "worker"]
    assert doc | {"ts": "t"} == {
        "ts": "t", "level": "info", "logger": "modelyard.router.access", "worker": 1,
        "request_id": "r1", "status": 200, "model": "m", "error": None,
    }  # fmt: skip


def test_other_lines_carry_their_message_and_no_worker_outside_workers() -> None:
    doc = json.loads(JsonFormatter().format(_record("modelyard.router", 'quote " and {brace}')))
    assert doc["msg"] == 'quote " and {brace}'
    assert "worker" not in doc
    doc = json.loads(JsonFormatter().format(_record("modelyard.router.access", "{}", exc=True)))
    assert doc["msg"] == "{}"
    assert "ValueError: boom" in doc["exc"]


def test_lines_are_batched_until_a_flush_a_warning_or_the_size_limit(tmp_path: Path) -> None:
    out = tmp_path / "log"
    with out.open("wb") as f:
        handler = BatchedLineHandler(f.fileno(), max_pending=300)
        handler.setFormatter(JsonFormatter())
        logger = logging.getLogger("test.batched")
        logger.propagate = False
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        try:
            logger.info("one")
            logger.info("two")
            assert out.read_bytes() == b""  # nothing written yet
            handler.flush()
            assert [json.loads(x)["msg"] for x in out.read_text().splitlines()] == ["one", "two"]
            logger.info("three")
            logger.warning("four")  # written at once, after the line before it
            assert [json.loads(x)["msg"] for x in out.read_text().splitlines()][2:] == ["three", "four"]
            for _ in range(5):
                logger.info("x" * 80)  # passes 300 bytes: written without a flush
            assert len(out.read_text().splitlines()) >= 6
        finally:
            logger.removeHandler(handler)


class _Traced:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"


def test_an_access_line_written_as_bytes_is_the_formatters_line(tmp_path: Path) -> None:
    fields: dict[str, object] = {
        "request_id": "r1", "model": "m", "status": 200, "stream": False, "duration_ms": 1.234,
        "ttft_ms": None, "error": 'quote " and {brace}',
    }  # fmt: skip
    out = tmp_path / "log"
    with out.open("wb") as f:
        handler = BatchedLineHandler(f.fileno())
        lines = AccessLines(handler, worker=2)
        lines.write(fields)
        token = access_trace.set(_Traced())
        try:
            lines.write(fields)
        finally:
            access_trace.reset(token)
        assert out.read_bytes() == b""  # batched like every INFO line
        handler.flush()
    written = out.read_text().splitlines()
    formatter = JsonFormatter(worker=2)
    expected = [json.loads(formatter.format(_record("modelyard.router.access", json.dumps(fields))))]
    token = access_trace.set(_Traced())
    try:
        expected.append(json.loads(formatter.format(_record("modelyard.router.access", json.dumps(fields)))))
    finally:
        access_trace.reset(token)
    docs = [json.loads(line) for line in written]
    assert [list(doc) for doc in docs] == [list(doc) for doc in expected]  # the same fields, in order
    assert [doc | {"ts": "t"} for doc in docs] == [doc | {"ts": "t"} for doc in expected]
    assert docs[1]["trace_id"] == _Traced.trace_id
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(doc["ts"])) for doc in docs)
