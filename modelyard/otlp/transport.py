"""Sending an encoded ``ExportTraceServiceRequest``: OTLP/HTTP (``http/protobuf``, a POST to ``/v1/traces``)
or OTLP/gRPC (``TraceService/Export``). Both run on the exporter thread only.

gRPC goes through grpcio's channel with the request as raw bytes (no serializer): grpcio does HTTP/2, TLS and
deadlines, and neither the SDK nor the generated message classes are needed.
"""

from __future__ import annotations

import gzip
import http.client
import logging
import ssl
from typing import Any, Protocol
from urllib.parse import urlsplit

log = logging.getLogger("modelyard.otlp")

GRPC_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
# Retryable answers, per the OTLP specification ("Failures", both transports).
RETRYABLE_HTTP = frozenset({429, 502, 503, 504})
RETRYABLE_GRPC = frozenset(
    {
        "CANCELLED",
        "DEADLINE_EXCEEDED",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNAVAILABLE",
        "DATA_LOSS",
        "RESOURCE_EXHAUSTED",
    }
)


class ExportError(Exception):
    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class Transport(Protocol):
    def send(self, body: bytes, timeout_s: float) -> None:
        """Deliver one request, or raise ExportError."""

    def close(self) -> None: ...


class HttpTransport:
    """POSTs to the traces URL on one kept-alive connection, reopened after an error."""

    def __init__(
        self, url: str, headers: dict[str, str], compression: str = "", certificate: str | None = None
    ) -> None:
        parts = urlsplit(url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "localhost"
        self._port = parts.port or (443 if self._https else 80)
        self._path = (parts.path or "/v1/traces") + (f"?{parts.query}" if parts.query else "")
        self._gzip = compression == "gzip"
        self._headers = {
            **headers,
            "Content-Type": "application/x-protobuf",
            **({"Content-Encoding": "gzip"} if self._gzip else {}),
        }
        self._context = ssl.create_default_context(cafile=certificate) if self._https else None
        self._connection: http.client.HTTPConnection | None = None

    def _connect(self, timeout_s: float) -> http.client.HTTPConnection:
        if self._connection is None:
            if self._context is not None:
                self._connection = http.client.HTTPSConnection(
                    self._host, self._port, timeout=timeout_s, context=self._context
                )
            else:
                self._connection = http.client.HTTPConnection(self._host, self._port, timeout=timeout_s)
        else:
            self._connection.timeout = timeout_s
            if self._connection.sock is not None:
                self._connection.sock.settimeout(timeout_s)
        return self._connection

    def send(self, body: bytes, timeout_s: float) -> None:
        payload = gzip.compress(body, compresslevel=6) if self._gzip else body
        try:
            connection = self._connect(timeout_s)
            connection.request("POST", self._path, body=payload, headers=self._headers)
            response = connection.getresponse()
            answer = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise ExportError(f"{type(exc).__name__}: {exc}", retryable=True) from None
        if not 200 <= response.status < 300:
            raise ExportError(
                f"HTTP {response.status}: {answer[:200]!r}", retryable=response.status in RETRYABLE_HTTP
            )

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class GrpcTransport:
    """Unary ``Export`` calls on one grpcio channel (plaintext for ``http://`` or ``insecure``)."""

    def __init__(
        self,
        endpoint: str,
        headers: dict[str, str],
        insecure: bool,
        compression: str = "",
        certificate: str | None = None,
    ) -> None:
        import grpc

        self._channel = grpc_channel(grpc, endpoint, insecure, compression, certificate)
        self.export: Any = self._channel.unary_unary(GRPC_METHOD)  # bytes in, bytes out
        self.metadata = tuple((k.lower(), v) for k, v in headers.items())
        self.rpc_error: type[Exception] = grpc.RpcError

    def send(self, body: bytes, timeout_s: float) -> None:
        try:
            self.export(body, timeout=timeout_s, metadata=self.metadata)
        except self.rpc_error as exc:
            raise self.export_error(exc) from None

    @staticmethod
    def export_error(exc: Exception) -> ExportError:
        """A failed call's ``grpc.RpcError`` as an ExportError, retryable per the OTLP specification."""
        code = exc.code() if hasattr(exc, "code") else None
        name = getattr(code, "name", str(code))
        details = exc.details() if hasattr(exc, "details") else ""
        return ExportError(f"gRPC {name}: {details}", retryable=name in RETRYABLE_GRPC)

    def close(self) -> None:
        self._channel.close()


def grpc_channel(
    grpc: Any, endpoint: str, insecure: bool, compression: str = "", certificate: str | None = None
) -> Any:
    """A channel to ``endpoint`` from ``grpc`` or ``grpc.aio`` (the same calls make either kind)."""
    parts = urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
    target = parts.netloc or endpoint
    if insecure:
        return grpc.insecure_channel(target, compression=_grpc_compression(compression))
    root = None
    if certificate:
        with open(certificate, "rb") as f:
            root = f.read()
    import grpc as sync

    credentials = sync.ssl_channel_credentials(root)
    return grpc.secure_channel(target, credentials, compression=_grpc_compression(compression))


def _grpc_compression(name: str) -> Any:
    import grpc

    return grpc.Compression.Gzip if name == "gzip" else None
