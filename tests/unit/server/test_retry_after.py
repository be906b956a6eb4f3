"""Retry-After follows how fast the queue drains (completions per second over a window), in [1, 60] s."""

from __future__ import annotations

from modelyard.server.retry_after import DrainRate


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_wait_is_the_time_the_queue_needs_to_drain() -> None:
    clock = Clock()
    drain = DrainRate(window_s=10, clock=clock)
    for _ in range(20):  # 2 completions per second over the 10 s window
        clock.now += 0.5
        drain.record()
    assert drain.per_second() == 2.0
    assert drain.retry_after_s(queued=39) == 20.0  # 40 requests ahead at 2/s


def test_wait_is_clamped_to_one_and_sixty_seconds() -> None:
    clock = Clock()
    drain = DrainRate(window_s=10, clock=clock)
    for _ in range(1000):
        clock.now += 0.01
        drain.record()
    assert drain.retry_after_s(queued=0) == 1.0
    slow = DrainRate(window_s=30, clock=clock)
    slow.record()
    assert slow.retry_after_s(queued=100) == 60.0


def test_old_completions_leave_the_window() -> None:
    clock = Clock()
    drain = DrainRate(window_s=10, clock=clock)
    clock.now += 10
    for _ in range(50):
        drain.record()
    assert drain.retry_after_s(queued=99) == 20.0  # 50 per 10 s: 100 requests need 20 s
    clock.now += 11  # nothing finished for longer than the window: the rate is unknown again
    assert drain.per_second() is None
    assert drain.retry_after_s(queued=3) is None
