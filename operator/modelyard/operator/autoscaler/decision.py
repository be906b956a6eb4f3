"""Pure: a window of load samples + the model's autoscaling spec + its replicas now -> replicas wanted.

The signal is requests in flight per model, counted by the routers: those being answered plus those
held while no pod is ready. Rules, in order:

* Scale from zero: at 0 replicas, any request in flight (held) wants one replica at once, or more if
  the load already needs them. Nothing is averaged: the first request must not wait for a window.
* Scale up: the average over ``windowSeconds``, divided by ``targetRequests`` and rounded up, above
  the current count raises it at once (up to ``maxReplicas``).
* Scale down: only when the samples span ``scaleDownDelaySeconds`` and the *highest* need seen in that
  span is below the current count (a stabilisation window, as HPA's: one busy moment in the delay keeps
  the replicas, so the count does not flap). It then goes in one step to the highest need seen in the
  last ``windowSeconds``: a load that stopped scales down once, not once per straggling request.
  Never below what the requests in flight right now need, nor below ``minReplicas`` (0: scale to zero).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

HISTORY_MARGIN_S = 5.0


class Reason(StrEnum):
    SCALE_FROM_ZERO = "ScaleFromZero"
    SCALE_UP = "ScaleUp"
    SCALE_DOWN = "ScaleDown"
    SCALE_TO_ZERO = "ScaleToZero"
    STEADY = "Steady"
    NO_SIGNAL = "NoSignal"


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # monotonic seconds
    in_flight: int  # every request the routers hold for the model, answered or waiting
    held: int = 0  # of which waiting for a ready pod


@dataclass(frozen=True, slots=True)
class Policy:
    min_replicas: int
    max_replicas: int
    target_requests: int
    window_s: float
    scale_down_delay_s: float

    def clamp(self, replicas: int) -> int:
        return min(max(replicas, self.min_replicas), self.max_replicas)

    @property
    def horizon_s(self) -> float:
        """How much history a decision reads: a little more than the delay, so that the oldest sample
        shows whether the delay is covered at all (right after a restart it is not)."""
        return max(self.window_s, self.scale_down_delay_s) + HISTORY_MARGIN_S


@dataclass(frozen=True, slots=True)
class Decision:
    desired: int
    reason: Reason
    average: float  # in flight, averaged over the window
    latest: Sample | None

    @property
    def changes(self) -> bool:
        return self.reason not in (Reason.STEADY, Reason.NO_SIGNAL)

    def message(self, current: int, policy: Policy) -> str:
        latest = self.latest or Sample(0.0, 0)
        return (
            f"replicas {current} -> {self.desired}: {latest.in_flight} requests in flight "
            f"({latest.held} waiting for a pod), {self.average:.2f} on average over "
            f"{policy.window_s:g}s, target {policy.target_requests} per replica, "
            f"bounds {policy.min_replicas}..{policy.max_replicas}"
        )


def need(in_flight: float, target: int) -> int:
    """Replicas that ``in_flight`` requests need at ``target`` per replica."""
    return math.ceil(in_flight / target - 1e-9) if in_flight > 0 else 0


def decide(samples: Sequence[Sample], policy: Policy, current: int, now: float) -> Decision:
    """``samples`` oldest first; only fresh ones (the caller drops history beyond the horizon)."""
    if not samples:
        return Decision(current, Reason.NO_SIGNAL, 0.0, None)
    latest = samples[-1]
    window = [s for s in samples if s.at >= now - policy.window_s] or [latest]
    average = sum(s.in_flight for s in window) / len(window)
    needed_now = need(latest.in_flight, policy.target_requests)

    if current == 0 and latest.in_flight > 0:
        wanted = policy.clamp(max(1, needed_now, need(average, policy.target_requests)))
        return Decision(wanted, Reason.SCALE_FROM_ZERO, average, latest)

    wanted_up = policy.clamp(max(need(average, policy.target_requests), needed_now))
    if wanted_up > current:
        return Decision(wanted_up, Reason.SCALE_UP, average, latest)

    covered = samples[0].at <= now - policy.scale_down_delay_s
    if covered:
        delay = [s for s in samples if s.at >= now - policy.scale_down_delay_s]
        peak_in_delay = max(need(s.in_flight, policy.target_requests) for s in delay)
        # Low load for the whole delay: go straight to what the last window needs (its peak), in one
        # step, rather than stepping down as the tail of a stopped load ages out of the delay.
        peak_in_window = max(need(s.in_flight, policy.target_requests) for s in window)
        wanted_down = policy.clamp(max(peak_in_window, needed_now))
        if peak_in_delay < current and wanted_down < current:
            reason = Reason.SCALE_TO_ZERO if wanted_down == 0 else Reason.SCALE_DOWN
            return Decision(wanted_down, reason, average, latest)
    if current < policy.min_replicas or current > policy.max_replicas:
        wanted = policy.clamp(current)
        return Decision(wanted, Reason.SCALE_UP if wanted > current else Reason.SCALE_DOWN, average, latest)
    return Decision(current, Reason.STEADY, average, latest)
