"""What a failed reconcile means: the message users see, and whether trying again can help.

Pure: classifies an exception, so the handler can record it (status + Event) and pick kopf's retry
behaviour deliberately instead of retrying everything every few seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from modelyard.operator.k8s import ApiError, TransientError

# The API server rejected the object itself (schema, field validation, admission): the same spec gets
# the same answer, so only a spec change (kopf calls the update handler again) can fix it.
PERMANENT_CODES = frozenset({400, 422})

FIRST_RETRY_SECONDS = 5.0
MAX_RETRY_SECONDS = 300.0

REASON = "ReconcileFailed"


@dataclass(frozen=True)
class ReconcileFailure:
    """A reconcile that failed, as shown on the LLMModel (Ready=False, reason ReconcileFailed)."""

    message: str
    permanent: bool
    generation: int
    error: str  # metrics label: api_<code>, transport, invalid, internal


def classify(exc: BaseException, generation: int) -> ReconcileFailure:
    if isinstance(exc, ApiError):
        code = int(exc.status.code or 0)
        text = exc.status.message or exc.status.reason or str(exc)
        return ReconcileFailure(
            message=f"applying children failed: {text}",
            permanent=code in PERMANENT_CODES,
            generation=generation,
            error=f"api_{code}",
        )
    if isinstance(exc, ValidationError):
        return ReconcileFailure(
            message=f"invalid spec: {exc}", permanent=True, generation=generation, error="invalid"
        )
    if isinstance(exc, TransientError):
        return ReconcileFailure(
            message=f"API server unreachable or slow: {exc!r}",
            permanent=False,
            generation=generation,
            error="transport",
        )
    return ReconcileFailure(
        message=f"internal error: {exc!r}", permanent=False, generation=generation, error="internal"
    )


def retry_delay(retry: int) -> float:
    """Exponential back-off for temporary failures: 5 s, 10 s, 20 s ... capped at 5 min, so an API
    server that stays unhappy (RBAC, quota, outage) is not hammered by every model every 5 s."""
    return min(MAX_RETRY_SECONDS, FIRST_RETRY_SECONDS * float(1 << min(max(retry, 0), 16)))
