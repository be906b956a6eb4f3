"""Poll a condition until it holds: the tests' only way to wait for another process (no fixed sleeps)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


def wait_until(predicate: Callable[[], Any], timeout_s: float = 20.0, what: str = "condition") -> Any:
    """The first truthy value of ``predicate()``, polled with a backoff up to 0.2 s.

    Raises TimeoutError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)


async def eventually(predicate: Callable[[], Any], timeout_s: float = 20.0, what: str = "condition") -> Any:
    """``wait_until`` for async tests: the blocking predicate runs in a thread; the loop keeps serving."""
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while True:
        value = await asyncio.get_running_loop().run_in_executor(None, predicate)
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.2)
