"""``EngineWatch`` on a fake clock: hung only with work queued and no progress, unready first."""

from __future__ import annotations

from modelyard.server.engine.types import EngineStats
from modelyard.server.engine_watch import EngineWatch, OpenStreams


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def stats(running: int, steps: int) -> EngineStats:
    return EngineStats(running, 0, 0.0, 8, 8, num_steps=steps)


def test_work_without_progress_is_unready_then_hung_and_progress_clears_it() -> None:
    clock, current = Clock(), [stats(1, 5)]
    watch = EngineWatch(lambda: current[0], OpenStreams(), 10.0, clock)
    watch.poll()
    clock.now = 4.9
    watch.poll()
    assert watch.unready() is None
    clock.now = 5.0
    watch.poll()
    assert watch.unready() is not None
    assert watch.hung() is None
    clock.now = 10.0
    watch.poll()
    assert "no progress for 10.0 s" in (watch.hung() or "")
    current[0] = stats(1, 6)
    watch.poll()
    assert watch.unready() is None
    assert watch.hung() is None


def test_an_idle_engine_is_never_hung() -> None:
    clock = Clock()
    watch = EngineWatch(lambda: stats(0, 5), OpenStreams(), 10.0, clock)
    clock.now = 100.0
    watch.poll()
    assert watch.hung() is None


def test_an_open_stream_is_work_and_its_outputs_are_progress() -> None:
    clock, streams = Clock(), OpenStreams(open=1)
    watch = EngineWatch(lambda: stats(0, 5), streams, 10.0, clock)
    watch.poll()
    clock.now = 9.0
    streams.outputs += 1
    watch.poll()
    clock.now = 18.0
    watch.poll()
    assert watch.hung() is None
    clock.now = 19.0
    watch.poll()
    assert watch.hung() is not None


def test_zero_turns_the_watch_off() -> None:
    clock = Clock()
    watch = EngineWatch(lambda: stats(1, 5), OpenStreams(), 0.0, clock)
    watch.poll()
    clock.now = 1e6
    watch.poll()
    assert watch.hung() is None
    assert watch.unready() is None
