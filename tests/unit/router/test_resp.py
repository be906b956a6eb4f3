"""The store client's pure parts: RESP packing and parsing (replies cut anywhere), and store URLs."""

from __future__ import annotations

import ssl

import pytest

from modelyard.router.resp import Endpoint, ReplyError, _Incomplete, _parse, pack

REPLIES = (
    b"+OK\r\n:42\r\n$5\r\nhello\r\n$-1\r\n*3\r\n:0\r\n$0\r\n\r\n*2\r\n:-7\r\n$-1\r\n"
    b"-NOSCRIPT No matching\r\n*0\r\n"
)
VALUES = ["OK", 42, b"hello", None, [0, b"", [-7, None]], "NOSCRIPT No matching", []]


def parse_all(buf: bytes) -> list[object]:
    out: list[object] = []
    pos = 0
    while pos < len(buf):
        value, pos = _parse(buf, pos)
        out.append(str(value) if isinstance(value, ReplyError) else value)
    return out


def test_every_reply_kind_parses() -> None:
    assert parse_all(REPLIES) == VALUES


def parse_head(head: bytes) -> tuple[list[object], int]:
    """The whole replies at the start of ``head``, and where the cut one begins."""
    pos, parsed = 0, list[object]()
    while True:
        try:
            value, pos = _parse(head, pos)
        except _Incomplete:
            return parsed, pos
        parsed.append(str(value) if isinstance(value, ReplyError) else value)


@pytest.mark.parametrize("cut", range(1, len(REPLIES)))
def test_a_reply_cut_anywhere_is_incomplete_not_wrong(cut: int) -> None:
    parsed, pos = parse_head(REPLIES[:cut])
    assert parsed == VALUES[: len(parsed)]
    assert len(parsed) < len(VALUES)
    assert parse_all(REPLIES[pos:]) == VALUES[len(parsed) :]


def test_pack_is_a_resp_array_of_bulk_strings() -> None:
    assert (
        pack(("SET", "k", 12, b"\x00\r\n")) == b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n12\r\n$3\r\n\x00\r\n\r\n"
    )


def test_store_urls() -> None:
    plain = Endpoint.parse("redis://store:6380/2")
    assert (plain.host, plain.port, plain.db, plain.password, plain.tls) == ("store", 6380, 2, None, None)
    auth = Endpoint.parse("redis://app:p%40ss@store?db=5")
    assert (auth.port, auth.db, auth.username, auth.password) == (6379, 5, "app", "p@ss")
    assert Endpoint.parse("redis://:inurl@store/0", password="from-secret").password == "from-secret"
    tls = Endpoint.parse("rediss://store/1")
    assert tls.tls is not None
    assert tls.tls.verify_mode == ssl.CERT_REQUIRED
    assert tls.tls.check_hostname
    loose = Endpoint.parse("rediss://store/1?ssl_cert_reqs=none")
    assert loose.tls is not None
    assert loose.tls.verify_mode == ssl.CERT_NONE
    with pytest.raises(ValueError, match="redis://"):
        Endpoint.parse("http://store:6379")
