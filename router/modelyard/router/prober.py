"""The active prober: ejected pods are asked ``probe_path`` every ``probe_interval_s`` and re-admitted as
soon as they answer, instead of waiting out their back-off (health.py decides ejection, without I/O)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiohttp

from modelyard.router.health import Health
from modelyard.router.settings import RouterSettings

log = logging.getLogger("modelyard.router")


async def probe_ejected(
    settings: RouterSettings, health: Health, session: Callable[[], aiohttp.ClientSession]
) -> None:
    """Re-admit ejected pods as soon as they answer, instead of waiting out the back-off."""
    timeout = aiohttp.ClientTimeout(total=max(1.0, settings.probe_interval_s))
    while True:
        await asyncio.sleep(settings.probe_interval_s)
        for url in health.ejected():
            try:
                async with session().get(url + settings.probe_path, timeout=timeout) as resp:
                    alive = resp.status < 500
            except (aiohttp.ClientError, TimeoutError):
                alive = False
            if alive:
                log.info("re-admitted %s: it answers again", url)
                health.readmit(url)
