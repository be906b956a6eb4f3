"""One LLMModel's autoscaling loop: read the signal, decide, and act through the scale subresource.

Runs as a kopf daemon per LLMModel (handlers.py), so kopf peering gives exactly one writer: a paused
(standby) operator has its daemons stopped. Each decision that changes the replica count is written
with a PATCH of ``llmmodels/<name>/scale`` (nothing else), then announced as an Event and in
``status.autoscaler``. In ``mode: External`` (or without ``spec.autoscaling``) it only observes.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from modelyard.api.llmmodel import AutoscalerStatus, AutoscalingMode, LLMModel
from modelyard.operator import metrics
from modelyard.operator.autoscaler.decision import Decision, Policy, Reason, decide
from modelyard.operator.autoscaler.signal import LoadSignal

log = logging.getLogger(__name__)


class ScaleWriter(Protocol):
    async def patch_scale(self, namespace: str, name: str, replicas: int) -> None: ...

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None: ...

    async def post_event(self, model: dict[str, Any], event_type: str, reason: str, message: str) -> None: ...


EVENT_REASONS = {
    Reason.SCALE_FROM_ZERO: "ScaledFromZero",
    Reason.SCALE_UP: "ScaledUp",
    Reason.SCALE_DOWN: "ScaledDown",
    Reason.SCALE_TO_ZERO: "ScaledToZero",
}
# After a write, the watched body may lag a moment behind: trust our own write this long.
WRITE_SETTLE_S = 5.0


@dataclass
class LoopState:
    """What one model's loop remembers between looks."""

    written: int | None = None
    written_at: float = 0.0


def policy_of(model: LLMModel) -> Policy | None:
    """The model's autoscaling policy, or None when the built-in autoscaler must not act."""
    auto = model.spec.autoscaling
    if auto is None or auto.mode is not AutoscalingMode.BUILTIN:
        return None
    return Policy(
        min_replicas=auto.min_replicas,
        max_replicas=auto.max_replicas,
        target_requests=auto.target_requests,
        window_s=float(auto.window_seconds),
        scale_down_delay_s=float(auto.scale_down_delay_seconds),
    )


def _now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


async def autoscale_once(
    body: Mapping[str, Any], signal: LoadSignal, writer: ScaleWriter, now: float, state: LoopState
) -> Decision | None:
    """One look at one model; returns the decision when it changed the replica count."""
    model = LLMModel.from_body(body)
    policy = policy_of(model)
    labels = (model.namespace, model.name, model.served_name)
    if policy is None:
        return None
    current = model.spec.desired_replicas
    if state.written is not None and current != state.written and now - state.written_at < WRITE_SETTLE_S:
        current = state.written  # our own scale write has not reached the watched copy yet
    samples = signal.samples((model.namespace, model.name), policy.horizon_s)
    decision = decide(samples, policy, current, now)
    metrics.AUTOSCALER_TARGET.labels(*labels).set(policy.target_requests)
    if decision.latest is not None:
        metrics.AUTOSCALER_REQUESTS.labels(*labels).set(decision.latest.in_flight)
        metrics.AUTOSCALER_HELD.labels(*labels).set(decision.latest.held)
        metrics.AUTOSCALER_AVERAGE.labels(*labels).set(decision.average)
    metrics.AUTOSCALER_DESIRED.labels(*labels).set(decision.desired)
    if not decision.changes or decision.desired == current:
        return None
    message = decision.message(current, policy)
    await writer.patch_scale(model.namespace, model.name, decision.desired)
    state.written, state.written_at = decision.desired, now
    metrics.AUTOSCALER_DECISIONS.labels(*labels, decision.reason.value).inc()
    log.info("autoscaler %s/%s: %s (%s)", model.namespace, model.name, decision.reason.value, message)
    status = AutoscalerStatus(
        desired_replicas=decision.desired,
        last_scale_time=_now(),
        reason=decision.reason.value,
        message=message,
    )
    try:
        await writer.patch_status(model.namespace, model.name, {"autoscaler": status.to_wire()})
        await writer.post_event(dict(body), "Normal", EVENT_REASONS[decision.reason], message)
    except Exception as exc:  # the scale write is what matters; the report is best effort
        log.warning("could not report the scaling of %s/%s: %s", model.namespace, model.name, exc)
    return decision
