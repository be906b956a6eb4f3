"""An OTLP receiver (http/protobuf, or gRPC with ``--grpc``) that reads each export and discards it: the
collector for ``bench/tracing_overhead.py --collector discard``.

On a two-core machine, a trace backend that stores what it receives (Jaeger: decoding, batching, indexing
thousands of spans a second) runs beside the router under test and slows it through the shared cores and
caches; its CPU is printed apart. This receiver costs next to nothing, so the router's own cost of tracing
is what remains. The tests still export to a real Jaeger (tests/integration/observability/).

    python bench/otlp_discard.py --port PORT [--grpc]
"""

from __future__ import annotations

import argparse
import asyncio
from concurrent import futures

import grpc

SERVICE, METHOD = "opentelemetry.proto.collector.trace.v1.TraceService", "Export"

_OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n"


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            writer.write(_OK)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(_serve, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def serve_grpc(port: int) -> None:
    """An empty ExportTraceServiceResponse for every export, bytes in and out (nothing decoded)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: b"")
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--grpc", action="store_true", help="receive OTLP/gRPC instead of OTLP/HTTP")
    args = parser.parse_args()
    if args.grpc:
        serve_grpc(args.port)
    else:
        asyncio.run(main(args.port))
