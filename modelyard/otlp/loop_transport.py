"""Sending an encoded ``ExportTraceServiceRequest`` from the event loop (loop_export.py), without a thread of
our own.

- OTLP/HTTP: a POST on one kept-alive non-blocking connection (asyncio streams, TLS for ``https://``),
  reopened after an error; the answer is read in full so the connection stays usable.
- OTLP/gRPC: grpcio's asyncio API (``grpc.aio``) on the same loop: grpcio's C core sends and the loop is
  woken once per export with the outcome. A gRPC client of our own on the loop would need HTTP/2 framing,
  flow control and HPACK decoding of the trailers: grpcio already does that without holding the GIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import ssl
from typing import Any
from urllib.parse import urlsplit

from modelyard.otlp.transport import GRPC_METHOD, RETRYABLE_HTTP, ExportError, GrpcTransport, grpc_channel

_MAX_ANSWER = 1 << 20


class LoopHttpTransport:
    def __init__(
        self, url: str, headers: dict[str, str], compression: str = "", certificate: str | None = None
    ) -> None:
        parts = urlsplit(url)
        https = parts.scheme == "https"
        self._host = parts.hostname or "localhost"
        self._port = parts.port or (443 if https else 80)
        path = (parts.path or "/v1/traces") + (f"?{parts.query}" if parts.query else "")
        self._gzip = compression == "gzip"
        host = self._host if parts.port is None else f"{self._host}:{parts.port}"
        lines = [f"POST {path} HTTP/1.1", f"Host: {host}", "Content-Type: application/x-protobuf"]
        if self._gzip:
            lines.append("Content-Encoding: gzip")
        lines.extend(f"{key}: {value}" for key, value in headers.items())
        self._head = ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")
        self._ssl = ssl.create_default_context(cafile=certificate) if https else None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def send(self, body: bytes, timeout_s: float) -> None:
        payload = gzip.compress(body, compresslevel=6) if self._gzip else body
        try:
            async with asyncio.timeout(timeout_s):
                status, answer = await self._post(payload)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            await self.aclose()
            raise ExportError(f"{type(exc).__name__}: {exc}", retryable=True) from None
        if not 200 <= status < 300:
            raise ExportError(f"HTTP {status}: {answer[:200]!r}", retryable=status in RETRYABLE_HTTP)

    async def _post(self, payload: bytes) -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self._host, self._port, ssl=self._ssl)
        reader, writer = self._reader, self._writer
        assert reader is not None
        # Head and body in one writev: the body (a batch, hundreds of kB) is not copied into a new string.
        writer.writelines((self._head + str(len(payload)).encode() + b"\r\n\r\n", payload))
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            if name:
                headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            answer = await _read_chunked(reader)
        elif "content-length" in headers:
            answer = await reader.readexactly(int(headers["content-length"]))
        else:  # the answer ends with the connection
            answer = await reader.read(_MAX_ANSWER)
            headers["connection"] = "close"
        if headers.get("connection", "").lower() == "close":
            await self.aclose()
        return status, answer

    async def aclose(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):  # the peer went away first
                await writer.wait_closed()


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


class LoopGrpcTransport:
    """Unary ``Export`` calls on a ``grpc.aio`` channel: grpcio's C core does the I/O and wakes the loop
    through a file descriptor when a call ends. (Blocking-API ``future()`` calls from the loop cost more:
    grpcio started a Python thread per call to wait for its completion.) The channel belongs to a loop, so
    it is made on the first send."""

    def __init__(
        self,
        endpoint: str,
        headers: dict[str, str],
        insecure: bool,
        compression: str = "",
        certificate: str | None = None,
    ) -> None:
        self._target = (endpoint, insecure, compression, certificate)
        self._metadata = tuple((k.lower(), v) for k, v in headers.items())
        self._channel: Any = None
        self._export: Any = None

    async def send(self, body: bytes, timeout_s: float) -> None:
        from grpc import aio

        if self._channel is None:
            self._channel = grpc_channel(aio, *self._target)
            self._export = self._channel.unary_unary(GRPC_METHOD)  # bytes in, bytes out
        try:
            await self._export(body, timeout=timeout_s, metadata=self._metadata)
        except aio.AioRpcError as exc:
            raise GrpcTransport.export_error(exc) from None

    async def aclose(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()
