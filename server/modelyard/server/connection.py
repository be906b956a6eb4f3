"""uvicorn's HTTP protocol with a deadline for a request's headers (uvicorn has none).

Without it a client that opens a connection and sends its headers a byte at a time (slow-loris) holds
the connection, and a file descriptor, forever: uvicorn's only timer is the keep-alive one, armed after
a response and cancelled by the first byte of the next request. Here every connection must complete its
request headers within ``read_header_timeout`` seconds of connecting (or of its previous response), or
it is closed. Bodies are bounded separately, by ``RequestContextMiddleware``.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base
except ImportError:  # pragma: no cover - httptools is optional for uvicorn
    _Base = H11Protocol  # type: ignore[assignment,misc]


class HeaderDeadlineProtocol(_Base):
    def __init__(self, *args: Any, read_header_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout = read_header_timeout
        self._header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.cycle is not None and not self.cycle.response_complete:
            self._disarm_header_deadline()  # headers are complete: a request is being served

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        self._disarm_header_deadline()
        if not self.transport.is_closing():
            self._header_deadline = self.loop.call_later(self._header_timeout, self._headers_too_slow)

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if self.cycle is None or self.cycle.response_complete:
            self.transport.close()


def protocol_with_header_deadline(read_header_timeout: float) -> Any:
    """The protocol class for ``uvicorn.Config(http=...)``: uvicorn calls it with its usual arguments."""
    return functools.partial(HeaderDeadlineProtocol, read_header_timeout=read_header_timeout)
