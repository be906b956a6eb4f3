"""The event-loop exporter (the router's): requests' spans (request_spans.py, encoded by the exporter in
bulk) reach a real OTLP/HTTP endpoint and a real gRPC server as one decodable request per batch, a batch
never holds more spans than its size, a full batch leaves before the schedule delay, a retryable answer is
retried, and closing sends what is left."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from modelyard.otlp.build import build_loop_recorder
from modelyard.otlp.transport import GRPC_METHOD


class Collector:
    """An OTLP/HTTP endpoint on the test's loop: answers each POST with the next status (then 200)."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = statuses or []
        self.bodies: list[bytes] = []
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"POST /v1/traces HTTP/1.1\r\n")
                lines = head.split(b"\r\n")
                length = next(int(line[15:]) for line in lines if line.startswith(b"Content-Length:"))
                body = await reader.readexactly(length)
                status = self.statuses.pop(0) if self.statuses else 200
                if status == 200:
                    self.bodies.append(body)
                writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 2\r\n\r\n{{}}".encode())
                await writer.drain()
        except asyncio.IncompleteReadError:
            writer.close()

    def batches(self) -> list[list[str]]:
        """The span names of each request received."""
        batches = []
        for body in self.bodies:
            request = ExportTraceServiceRequest.FromString(body)
            names = []
            for resource in request.resource_spans:
                assert resource.resource.attributes[0].key
                names.extend(s.name for scope in resource.scope_spans for s in scope.spans)
            batches.append(names)
        return batches

    def spans(self) -> list[str]:
        return [name for batch in self.batches() for name in batch]


def _env(**extra: str) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_BSP_SCHEDULE_DELAY": "60000", **extra}


async def _until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Polls: the exporter has no event to wait on, and the test must not add one to it."""
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


def test_a_full_batch_is_posted_at_once_and_closing_sends_the_rest() -> None:
    async def main() -> None:
        collector = Collector()
        endpoint = await collector.start()
        recorder, exporter = build_loop_recorder(
            endpoint, _env(OTEL_BSP_MAX_EXPORT_BATCH_SIZE="100"), "modelyard-test", "test"
        )
        for i in range(125):  # two spans each: the request's and one child
            with recorder.request("GET", f"/s{i}", None) as request, request.child("child", {"i": i}):
                pass
        # Full batches leave at once (the schedule delay is a minute), and the rest of the queue with them.
        await _until(lambda: exporter.sent == 250)
        for i in range(125, 130):
            with recorder.request("GET", f"/s{i}", None) as request, request.child("child", {"i": i}):
                pass
        await asyncio.sleep(0.1)
        assert exporter.sent == 250  # the ten after are not a full batch: they wait
        await exporter.aclose()
        assert collector.spans() == [name for i in range(130) for name in ("child", f"GET /s{i}")]
        assert [len(batch) for batch in collector.batches()] == [100, 100, 50, 10]
        assert collector.connections == 1  # kept alive
        assert exporter.failed == exporter.dropped == 0

    asyncio.run(main())


def test_a_retryable_answer_is_retried_and_a_bad_request_is_dropped() -> None:
    async def main() -> None:
        collector = Collector([503, 400])
        endpoint = await collector.start()
        recorder, exporter = build_loop_recorder(endpoint, _env(OTEL_BSP_SCHEDULE_DELAY="10"), "test", "test")
        with recorder.request("GET", "/first", None):
            pass
        await _until(lambda: exporter.failed == 1)  # 503 retried after 0.1 s, then 400: not retryable
        with recorder.request("GET", "/second", None):
            pass
        await _until(lambda: exporter.sent == 1)
        await exporter.aclose()
        assert collector.spans() == ["GET /second"]

    asyncio.run(main())


def test_a_collector_that_is_down_costs_the_spans_not_the_loop() -> None:
    async def main() -> None:
        collector = Collector()
        endpoint = await collector.start()
        assert collector.server is not None
        collector.server.close()
        await collector.server.wait_closed()
        env = _env(OTEL_BSP_EXPORT_TIMEOUT="300")
        recorder, exporter = build_loop_recorder(endpoint, env, "modelyard-test", "test")
        with recorder.request("GET", "/lost", None):
            pass
        await exporter.aclose()
        assert exporter.failed == 1

    asyncio.run(main())


def test_grpc_export_from_the_loop_reaches_a_real_grpc_server() -> None:
    received: list[bytes] = []

    def export(request: bytes, context: grpc.ServicerContext) -> bytes:
        received.append(request)
        return b""

    service, method = GRPC_METHOD.strip("/").split("/")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handlers = {method: grpc.unary_unary_rpc_method_handler(export)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:

        async def main() -> None:
            env = {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "2"}
            recorder, exporter = build_loop_recorder(
                f"http://127.0.0.1:{port}", env, "modelyard-test", "test"
            )
            for name in ("a", "b", "c"):
                with recorder.request("GET", "/" + name, None):
                    pass
            await _until(lambda: exporter.sent == 3)  # without waiting for the schedule delay
            await exporter.aclose()
            assert exporter.sent == 3

        asyncio.run(main())
    finally:
        server.stop(None)
    names = [
        span.name
        for body in received
        for resource in ExportTraceServiceRequest.FromString(body).resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    assert names == ["GET /a", "GET /b", "GET /c"]


def test_spans_ended_off_the_loop_wait_for_it_and_are_sent_on_close() -> None:
    async def main() -> None:
        collector = Collector()
        endpoint = await collector.start()
        recorder, exporter = build_loop_recorder(endpoint, _env(), "modelyard-test", "test")

        def record() -> None:  # a thread with no event loop
            with recorder.request("GET", "/off-loop", None):
                pass

        await asyncio.get_running_loop().run_in_executor(None, record)
        await exporter.aclose()
        assert collector.spans() == ["GET /off-loop"]

    asyncio.run(main())


def test_the_routers_batches_are_larger_than_the_sdks_unless_the_environment_sets_them() -> None:
    """Each export costs the same whatever its size, so the router sends up to 2048 spans at a time."""
    _, exporter = build_loop_recorder("http://127.0.0.1:1", _env(), "modelyard-test", "test")
    assert (exporter._max_batch, exporter._max_queue) == (2048, 8192)
    env = _env(OTEL_BSP_MAX_EXPORT_BATCH_SIZE="512", OTEL_BSP_MAX_QUEUE_SIZE="2048")
    _, exporter = build_loop_recorder("http://127.0.0.1:1", env, "modelyard-test", "test")
    assert (exporter._max_batch, exporter._max_queue) == (512, 2048)
