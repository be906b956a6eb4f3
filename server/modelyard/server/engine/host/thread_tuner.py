"""Picks the engine's compute thread count from measured decode speed, and keeps checking it.

On CPU the best count depends on what else runs on the cores, which no setting knows. Measured on two
cores (``bench/README.md``): with the cores free, two engine threads decode 1.6x faster than one; with a
busy process on one core, two threads wait for each other at every OpenMP barrier and fall to a tenth
of one thread's speed. So the engine tries each allowed count for a few decode steps, in turn, keeps
the fastest (lowest seconds per row), and tries again when that count slows down (a neighbour arrived,
or the batch changed) or after a while (a neighbour may have left), holding a confirmed choice longer
each time. A count that is much slower than the best one seen in the same trial is dropped at its
first step, so a trial under contention costs about one slow step.

Where the kernel reports how long the process's threads waited for a CPU (``run_queue.py``), trials are
kept for when they can pay: at every usable core, a window whose threads hardly waited ran on free cores,
where fewer threads cannot be faster, so the tuner starts there and holds on without trying fewer (a
trial spends a dozen steps at the slower count: about a tenth of the throughput of a short run on free
cores). A contended window, when the hold ends or the speed drops, starts a trial as before.

Pure Python and a clock: the engine feeds it the time (and run-queue wait) of each decode-only step and
applies the count it returns.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

# A step this many times slower per row than the trial's best ends that count's turn at once.
ABANDON_RATIO = 2.5
# While holding a choice, a window this much slower per row than its trial starts a new trial.
SLOWDOWN_RATIO = 1.5
# A window whose threads waited for a CPU this share of their time (run-queue wait over seconds x threads)
# ran on contended cores. On two free cores the HTTP process's and the client's work per step makes a
# few percent; a process spinning on one of the two cores makes about a third.
CONTENDED_SHARE = 0.15


@dataclass
class ThreadTuner:
    choices: tuple[int, ...]  # allowed thread counts, each tried in turn
    window_steps: int = 6  # decode steps per turn (and per check while holding)
    rounds: int = 2  # turns per count in one trial
    hold_s: float = 20.0  # first hold after a trial; doubles while trials confirm the choice
    max_hold_s: float = 300.0
    clock: Callable[[], float] = time.monotonic
    # observe() gets the threads' run-queue wait: start at every thread, trials only under contention.
    wait_aware: bool = False
    current: int = 0
    trials: int = 0
    _order: list[int] = field(default_factory=list)  # counts still to try in this trial
    _seconds: dict[int, float] = field(default_factory=dict)
    _rows: dict[int, int] = field(default_factory=dict)
    _abandoned: set[int] = field(default_factory=set)
    # steps, seconds, rows, run-queue wait
    _window: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])
    _held_per_row: float = 0.0
    _hold_until: float = 0.0
    _hold: float = 0.0
    _held: int = 0  # the count in use when the trial started

    def __post_init__(self) -> None:
        if not self.choices:
            raise ValueError("no thread counts to choose from")
        self._hold = self.hold_s
        if self.wait_aware:
            # Free cores until the run queue says otherwise; the hold is over, so the first step decides.
            self.current = self.choices[0]
            self._held = self.current
            self._held_per_row = float("inf")
            self._hold_until = float("-inf")
            return
        self.current = self.choices[-1]
        self._start_trial()

    @property
    def tuning(self) -> bool:
        return bool(self._order)

    def _start_trial(self, seed: tuple[float, float] | None = None) -> None:
        """``seed``: (seconds, rows) just measured with the count in use, which then skips its first turn."""
        self.trials += 1
        # The count in use goes first: it is known to work, so a count that collapses under contention
        # is measured against it and dropped at its first step.
        turn = [self.current, *(c for c in self.choices if c != self.current)]
        self._order = turn * self.rounds if len(self.choices) > 1 else []
        self._held = self.current
        self._seconds = dict.fromkeys(self.choices, 0.0)
        self._rows = dict.fromkeys(self.choices, 0)
        self._abandoned = set()
        self._window = [0.0, 0.0, 0.0, 0.0]
        if seed is not None and self._order:
            self._seconds[self.current], self._rows[self.current] = seed[0], int(seed[1])
            self._order.pop(0)
        if self._order:
            self.current = self._order[0]

    def observe_start(self, seconds: float, waited: float) -> int:
        """The engine's warm-up took ``seconds`` with ``current`` threads, which waited ``waited``
        seconds for a CPU: contended cores start a trial the safe way, the fewest threads first (so
        the first prefill does not run at a count that collapses); returns the count to use."""
        contended = waited >= CONTENDED_SHARE * seconds * self.current
        if self.wait_aware and not self._order and seconds > 0 and contended:
            self.current = self.choices[-1]
            self._start_trial()
        return self.current

    def _per_row(self, count: int) -> float:
        rows = self._rows[count]
        return self._seconds[count] / rows if rows else float("inf")

    def observe(self, rows: int, seconds: float, waited: float = 0.0) -> int:
        """Record one decode-only step of ``rows`` rows that took ``seconds`` with ``current`` threads,
        whose threads waited ``waited`` seconds for a CPU in all; returns the count for the next step."""
        if rows <= 0 or seconds <= 0 or len(self.choices) == 1:
            return self.current
        steps, total, total_rows, wait = self._window
        self._window = [steps + 1, total + seconds, total_rows + rows, wait + waited]
        if self._order:
            self._observe_trial(rows, seconds)
        else:
            self._observe_hold()
        return self.current

    def _observe_trial(self, rows: int, seconds: float) -> None:
        count = self.current
        best_other = min((self._per_row(c) for c in self.choices if c != count), default=float("inf"))
        too_slow = seconds / rows > ABANDON_RATIO * best_other
        if too_slow:
            self._abandoned.add(count)
        else:
            self._seconds[count] += seconds
            self._rows[count] += rows
        if too_slow or self._window[0] >= self.window_steps:
            self._window = [0.0, 0.0, 0.0, 0.0]
            self._order.pop(0)
            self._order = [c for c in self._order if c not in self._abandoned]
            if self._order:
                self.current = self._order[0]
            else:
                self._finish_trial()

    def _finish_trial(self) -> None:
        kept = [c for c in self.choices if c not in self._abandoned and self._rows[c]]
        best = min(kept, key=self._per_row) if kept else self.choices[-1]
        confirmed = best == self._held and self.trials > 1
        self._hold = min(self.max_hold_s, self._hold * 2) if confirmed else self.hold_s
        self.current = best
        self._held_per_row = self._per_row(best)
        self._hold_until = self.clock() + self._hold

    def _observe_hold(self) -> None:
        steps, total, total_rows, waited = self._window
        expired = self.clock() >= self._hold_until
        # Reading the cores costs nothing: once the hold is over, every step is checked.
        checks_cores = self.wait_aware and self.current == self.choices[0]
        if steps < (1 if checks_cores and expired else self.window_steps):
            return
        self._window = [0.0, 0.0, 0.0, 0.0]
        slowed = total / total_rows > SLOWDOWN_RATIO * self._held_per_row
        if not (slowed or expired):
            return
        if checks_cores and waited < CONTENDED_SHARE * total * self.current:
            # Every thread ran on a free core (the batch changed, or the hold ended): fewer threads
            # cannot be faster, so hold on at this speed without a trial.
            self._held_per_row = total / total_rows
            self._hold_until = self.clock() + self._hold
            return
        if slowed:
            self._hold = self.hold_s
        self._start_trial(seed=(total, total_rows))
