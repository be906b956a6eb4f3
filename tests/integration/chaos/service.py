"""What a Service does for the router replicas in these tests: one address, connections spread over the
replicas that pass their readiness probe.

kube-proxy is not part of the test control plane, so this plays its part on loopback: every client
connection goes to the next ready replica (round robin) and is piped both ways, the replicas' ``/readyz``
is probed every ``probe_s`` (an endpoint leaves when its probe fails, as a not-ready pod leaves its
EndpointSlice). A connection whose replica dies is closed on the client, as a reset would be; a
connection that cannot reach its replica is closed at once, so the client retries. Connections open per
replica are counted, which is how a test knows how many streams a killed replica held.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import threading
import urllib.request
from collections import Counter


class Service:
    def __init__(self, backends: list[str], probe_s: float = 0.25) -> None:
        self.backends = list(backends)  # "host:port"
        self.ready: set[str] = set(backends)
        self.open = Counter[str]()  # client connections piped to each backend now
        self.port = 0
        self.probe_s = probe_s
        self._rr = itertools.count()
        self._loop = asyncio.new_event_loop()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_backends(self, backends: list[str]) -> None:
        """A replica replaced (a new pod, a new address): the probe adds it once it answers."""
        self.backends = list(backends)
        self.ready &= set(backends)

    def start(self) -> Service:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, sock=sock))
            started.set()
            self._loop.run_forever()

        for target in (run, self._probe):
            thread = threading.Thread(target=target, daemon=True, name=f"service-{target.__name__}")
            thread.start()
            self._threads.append(thread)
        started.wait(10)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        for thread in self._threads:
            thread.join(5)

    def _probe(self) -> None:
        while not self._stop.is_set():
            for backend in list(self.backends):
                try:
                    with urllib.request.urlopen(f"http://{backend}/readyz", timeout=1) as resp:
                        ok = resp.status == 200
                except OSError:
                    ok = False
                (self.ready.add if ok else self.ready.discard)(backend)
            self._stop.wait(self.probe_s)

    def _pick(self) -> str | None:
        ready = [b for b in self.backends if b in self.ready]
        return ready[next(self._rr) % len(ready)] if ready else None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        backend = self._pick()
        try:
            if backend is None:
                return
            host, port = backend.rsplit(":", 1)
            try:
                up_reader, up_writer = await asyncio.open_connection(host, int(port))
            except OSError:
                return  # closed without an answer: the client retries
            self.open[backend] += 1
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                self.open[backend] -= 1
                up_writer.close()
        finally:
            writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        # Either side ending ends both, as a reset does: a dead replica's client sees its stream cut.
        with contextlib.suppress(OSError):
            writer.close()
