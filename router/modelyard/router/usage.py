"""``GET /v1/usage``: a key reads its own usage and what is left of its limits and budgets.

The answer names only the calling key (never another); without keys configured there is nothing to
report and the path is 404 like any unknown one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from modelyard.router import errors
from modelyard.router.admission import Admission
from modelyard.router.keys import KeyState
from modelyard.router.quota import Periods


def _left(limit: int, used: int) -> int | None:
    return max(0, limit - used) if limit else None


async def usage_document(admission: Admission, key: KeyState) -> dict[str, Any]:
    usage, shared = await admission.usage(key)
    spec = key.spec
    periods = Periods.at(admission.keys.wall())
    return {
        "object": "usage",
        "key": key.name,
        "shared": shared,  # false: this replica's own count (no store, or the store is down)
        "day": f"{usage.day[:4]}-{usage.day[4:6]}-{usage.day[6:]}",
        "month": f"{usage.month[:4]}-{usage.month[4:]}",
        "requests": {
            "today": usage.requests_day,
            "per_day": spec.requests_per_day or None,
            "remaining_today": _left(spec.requests_per_day, usage.requests_day),
        },
        "tokens": {
            "today": usage.tokens_day,
            "this_month": usage.tokens_month,
            "per_day": spec.tokens_per_day or None,
            "per_month": spec.tokens_per_month or None,
            "remaining_today": _left(spec.tokens_per_day, usage.tokens_day),
            "remaining_this_month": _left(spec.tokens_per_month, usage.tokens_month),
        },
        "resets_in_s": {"day": round(periods.day_reset_s), "month": round(periods.month_reset_s)},
        "limits": {
            "requests_per_minute": spec.requests_per_minute or None,
            "tokens_per_minute": spec.tokens_per_minute or None,
            "max_concurrent": spec.max_concurrent or None,
        },
    }


def usage_handler(admission: Admission) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        keys = admission.keys
        if not keys.enabled:
            raise errors.not_found(request.path)
        key = keys.authenticate(request.headers.get("Authorization"))
        return web.json_response(await usage_document(admission, key))

    return handle
