"""A lean client for the Redis protocol (RESP2), just what the shared store (store.py) needs.

One connection carries every call, pipelined: a call packs its command, queues it and gets a future; the
commands queued in one turn of the event loop go out in one write, and the replies, read as they arrive,
settle the futures in order. redis-py's asyncio client spent about 200 us of router CPU per call (a
pool checkout, a retry wrapper, a timeout context, its parser); this costs a few.

Failures are :class:`StoreError` (the connection or a reply) and :class:`StoreTimeout` (a reply later
than ``timeout_s``). There is no retry inside: a broken connection fails every call waiting on it, and
the next call opens a new one. A timeout closes the connection too, since a reply that comes late would
answer the wrong call.

URLs: ``redis://[[user]:password@]host[:port][/db]`` and ``rediss://`` (TLS, verified against the system's
CAs or ``?ssl_ca_certs=/path/ca.pem``; ``?ssl_cert_reqs=none`` skips verification; the names redis-py
reads); ``?db=N`` works as well as the path.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

Arg = bytes | str | int


class StoreError(Exception):
    """The store could not be reached, dropped the connection, or answered with an error."""


class ReplyError(StoreError):
    """An error reply (``-ERR ...``, ``-NOSCRIPT ...``)."""


class StoreTimeout(StoreError):
    """No reply within the client's timeout."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int
    db: int
    username: str | None
    password: str | None
    tls: ssl.SSLContext | None

    @classmethod
    def parse(cls, url: str, password: str | None = None) -> Endpoint:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"store URL must be redis:// or rediss://, not {parts.scheme}://")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        path = parts.path.strip("/")
        db = int(path or query.get("db", "0"))
        tls = None
        if parts.scheme == "rediss":
            tls = ssl.create_default_context(cafile=query.get("ssl_ca_certs"))
            if query.get("ssl_cert_reqs", "required").lower() in ("none", "cert_none"):
                tls.check_hostname = False
                tls.verify_mode = ssl.CERT_NONE
        if password is None and parts.password:
            password = unquote(parts.password)
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 6379,
            db=db,
            username=unquote(parts.username) if parts.username else None,
            password=password,
            tls=tls,
        )


def pack(args: tuple[Arg, ...]) -> bytes:
    """A command as a RESP array of bulk strings."""
    return b"*%d\r\n" % len(args) + pack_bulk(args)


def pack_bulk(args: tuple[Arg, ...]) -> bytes:
    """Arguments as bulk strings, without the array's header (parts of a command packed apart)."""
    out = []
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class _Incomplete(Exception):
    pass


def _parse(buf: bytes | bytearray, pos: int) -> tuple[Any, int]:
    """One reply from ``buf`` at ``pos``: (value, position after it); :class:`_Incomplete` if cut off."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind = buf[pos]
    line = buf[pos + 1 : end]
    pos = end + 2
    if kind == 58:  # ':'
        return int(line), pos
    if kind == 36:  # '$'
        n = int(line)
        if n < 0:
            return None, pos
        if len(buf) < pos + n + 2:
            raise _Incomplete
        return bytes(buf[pos : pos + n]), pos + n + 2
    if kind == 42:  # '*'
        n = int(line)
        if n < 0:
            return None, pos
        items = []
        for _ in range(n):
            item, pos = _parse(buf, pos)
            items.append(item)
        return items, pos
    if kind == 43:  # '+'
        return line.decode(), pos
    if kind == 45:  # '-'
        return ReplyError(line.decode(errors="replace")), pos
    raise StoreError(f"unexpected reply from the store: {bytes(buf[pos - len(line) - 3 : pos])!r}")


class _Connection(asyncio.Protocol):
    """One connection: commands out in batches, replies matched to waiting futures in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
        self.loop = loop
        self.timeout_s = timeout_s
        self.transport: asyncio.Transport | None = None
        self.waiting: deque[tuple[asyncio.Future[Any], float]] = deque()
        self.out: list[bytes] = []
        self.buf = bytearray()
        self.closed: BaseException | None = None
        self._watch: asyncio.TimerHandle | None = None

    # -- sending --------------------------------------------------------------------------------

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = self.loop.create_future()
        if self.closed is not None:
            fut.set_exception(StoreError(f"store connection closed: {self.closed}"))
            return fut
        if not self.out:
            self.loop.call_soon(self._flush)
        self.out.append(packed)
        self.waiting.append((fut, time.monotonic()))
        if self._watch is None:
            self._watch = self.loop.call_later(self.timeout_s, self._check_timeouts)
        return fut

    def _flush(self) -> None:
        if self.out and self.transport is not None and self.closed is None:
            self.transport.write(b"".join(self.out) if len(self.out) > 1 else self.out[0])
        self.out.clear()

    def _check_timeouts(self) -> None:
        self._watch = None
        if not self.waiting or self.closed is not None:
            return
        age = time.monotonic() - self.waiting[0][1]
        if age >= self.timeout_s:
            self.close(StoreTimeout(f"no reply from the store in {self.timeout_s}s"))
            return
        self._watch = self.loop.call_later(self.timeout_s - age, self._check_timeouts)

    # -- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        buf: bytes | bytearray = data
        if self.buf:
            self.buf += data
            buf = self.buf
        pos = 0
        waiting = self.waiting
        try:
            while pos < len(buf) and waiting:
                value, pos = _parse(buf, pos)
                fut = waiting.popleft()[0]
                if fut.done():  # its caller was cancelled; the command ran all the same
                    continue
                if isinstance(value, ReplyError):
                    fut.set_exception(value)
                else:
                    fut.set_result(value)
        except _Incomplete:
            pass
        except (StoreError, ValueError) as exc:
            self.close(exc if isinstance(exc, StoreError) else StoreError(f"bad reply: {exc}"))
            return
        if pos < len(buf):
            self.buf = bytearray(buf[pos:])
        elif self.buf:
            self.buf = bytearray()

    def connection_lost(self, exc: Exception | None) -> None:
        self.close(StoreError(f"store connection lost: {exc or 'closed by the store'}"))

    def close(self, exc: BaseException) -> None:
        if self.closed is None:
            self.closed = exc
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        while self.waiting:
            fut = self.waiting.popleft()[0]
            if not fut.done():
                fut.set_exception(StoreError(str(exc)) if not isinstance(exc, StoreError) else exc)
        self.out.clear()
        if self.transport is not None:
            self.transport.abort()


class RespClient:
    """Calls on one pipelined connection, opened at the first call and again after it breaks."""

    def __init__(self, url: str, password: str | None = None, timeout_s: float = 0.5) -> None:
        self.endpoint = Endpoint.parse(url, password)
        self.timeout_s = timeout_s
        self._conn: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None
        self._shas: dict[str, bytes] = {}

    def send(self, *args: Arg) -> asyncio.Future[Any]:
        """Queue one command now (so it runs even if the caller is cancelled) and return its reply."""
        return self.send_packed(pack(args))

    def send_packed(self, packed: bytes) -> asyncio.Future[Any]:
        conn = self._conn
        if conn is not None and conn.closed is None:
            return conn.send(packed)
        return asyncio.ensure_future(self._send_when_connected(packed))

    async def call(self, *args: Arg) -> Any:
        return await self.send(*args)

    def sha(self, script: str) -> bytes:
        """The SHA1 that EVALSHA names ``script`` by."""
        sha = self._shas.get(script)
        if sha is None:
            sha = self._shas[script] = hashlib.sha1(script.encode()).hexdigest().encode()
        return sha

    def evalsha_command(self, script: str, packed_tail: bytes, nargs: int) -> bytes:
        """EVALSHA of ``script`` whose ``nargs`` further arguments (numkeys, keys, args) are packed."""
        return _head(b"EVALSHA", self.sha(script), nargs) + packed_tail

    def eval_command(self, script: str, packed_tail: bytes, nargs: int) -> bytes:
        """EVAL with the script's text: runs it and loads it for the next EVALSHA."""
        return _head(b"EVAL", script.encode(), nargs) + packed_tail

    async def _send_when_connected(self, packed: bytes) -> Any:
        conn = await self._connect()
        return await conn.send(packed)

    async def _connect(self) -> _Connection:
        connecting = self._connecting
        if connecting is None or connecting.done():  # one attempt at a time, shared by its callers
            connecting = self._connecting = asyncio.ensure_future(self._open())
            connecting.add_done_callback(_retrieve)
        return await asyncio.shield(connecting)

    async def _open(self) -> _Connection:
        ep = self.endpoint
        loop = asyncio.get_running_loop()
        conn = _Connection(loop, self.timeout_s)
        try:
            async with asyncio.timeout(self.timeout_s):
                await loop.create_connection(
                    lambda: conn, ep.host, ep.port, ssl=ep.tls, server_hostname=ep.host if ep.tls else None
                )
                hello: list[asyncio.Future[Any]] = []
                if ep.password is not None:
                    auth: tuple[Arg, ...] = ("AUTH", ep.password)
                    if ep.username:
                        auth = ("AUTH", ep.username, ep.password)
                    hello.append(conn.send(pack(auth)))
                if ep.db:
                    hello.append(conn.send(pack(("SELECT", ep.db))))
                failed: list[BaseException] = []
                for fut in hello:  # each awaited, so none is left with an unread error
                    try:
                        await fut
                    except StoreError as exc:
                        failed.append(exc)
                if failed:
                    raise failed[0]
        except TimeoutError:
            conn.close(StoreTimeout("store connect timed out"))
            raise StoreTimeout(f"store {ep.host}:{ep.port} did not answer in {self.timeout_s}s") from None
        except OSError as exc:
            conn.close(exc)
            raise StoreError(f"cannot reach the store at {ep.host}:{ep.port}: {exc}") from None
        except StoreError as exc:
            conn.close(exc)
            raise
        self._conn = conn
        return conn

    async def aclose(self) -> None:
        if self._conn is not None:
            self._conn.close(StoreError("client closed"))
            self._conn = None


def _head(verb: bytes, script_or_sha: bytes, nargs: int) -> bytes:
    """``*N $verb $script`` of an EVAL/EVALSHA whose remaining ``nargs`` arguments are packed apart."""
    return b"*%d\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
        nargs + 2,
        len(verb),
        verb,
        len(script_or_sha),
        script_or_sha,
    )


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Read a connection attempt's error, which its waiters got already (or none waited any more)."""
    if not fut.cancelled():
        fut.exception()
