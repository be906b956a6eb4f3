"""The engine keeps the thread count that decodes fastest here and now, and notices when that changes."""

from __future__ import annotations

from collections.abc import Callable

from modelyard.server.engine.host.thread_tuner import ThreadTuner


class Machine:
    """Seconds per decode row for each thread count, changeable mid-run; a fake clock advanced by steps."""

    def __init__(self, per_row: dict[int, float], waiting: dict[int, float] | None = None) -> None:
        self.per_row = per_row
        # Share of each thread's time spent waiting for a CPU, per thread count (a wait-aware tuner's view).
        self.waiting = waiting or {}
        self.now = 0.0
        self.steps_at: dict[int, int] = {}

    def clock(self) -> float:
        return self.now

    def run(self, tuner: ThreadTuner, steps: int, rows: int = 16) -> None:
        for _ in range(steps):
            threads = tuner.current
            seconds = self.per_row[threads] * rows
            self.now += seconds
            self.steps_at[threads] = self.steps_at.get(threads, 0) + 1
            tuner.observe(rows, seconds, self.waiting.get(threads, 0.0) * seconds * threads)


def tuner_on(machine: Machine, wait_aware: bool = False, **kwargs: float) -> ThreadTuner:
    clock: Callable[[], float] = machine.clock
    return ThreadTuner((2, 1), clock=clock, wait_aware=wait_aware, **kwargs)  # type: ignore[arg-type]


def test_free_cores_get_every_thread() -> None:
    machine = Machine({2: 0.005, 1: 0.008})  # two threads 1.6x faster, as measured on two free cores
    tuner = tuner_on(machine)
    assert tuner.current == 1  # the safe count first
    machine.run(tuner, 24)
    assert not tuner.tuning
    assert tuner.current == 2


def test_a_busy_neighbour_keeps_one_thread_and_costs_one_slow_step_per_trial() -> None:
    machine = Machine({2: 0.08, 1: 0.008})  # two threads collapse to a tenth of the speed
    tuner = tuner_on(machine)
    machine.run(tuner, 30)
    assert tuner.current == 1
    assert machine.steps_at[2] == 1


def test_a_neighbour_arriving_makes_it_drop_to_fewer_threads() -> None:
    machine = Machine({2: 0.005, 1: 0.008})
    tuner = tuner_on(machine)
    machine.run(tuner, 24)
    assert tuner.current == 2
    machine.per_row = {2: 0.08, 1: 0.009}
    before = machine.steps_at[2]
    machine.run(tuner, 20)
    assert tuner.current == 1
    # One window at the slowed count shows the slowdown and seeds the new trial, where two threads
    # are then dropped at their first step.
    assert machine.steps_at[2] - before == tuner.window_steps + 1


def test_a_neighbour_leaving_is_noticed_when_the_hold_ends() -> None:
    machine = Machine({2: 0.08, 1: 0.008})
    tuner = tuner_on(machine, hold_s=20.0)
    machine.run(tuner, 20)
    assert tuner.current == 1
    machine.per_row = {2: 0.005, 1: 0.008}
    machine.run(tuner, 200)  # 200 steps x 0.128 s: past the hold
    assert tuner.current == 2


def test_a_confirmed_choice_is_held_longer_each_time() -> None:
    machine = Machine({2: 0.005, 1: 0.008})
    tuner = tuner_on(machine, hold_s=1.0, max_hold_s=4.0)
    machine.run(tuner, 2000)
    # First hold 1 s, then 2, 4, 4, ...: far fewer trials than one per second of decoding.
    assert tuner.current == 2
    assert tuner.trials < machine.now / 2


def test_one_choice_never_tunes() -> None:
    tuner = ThreadTuner((3,))
    assert not tuner.tuning
    assert all(tuner.observe(16, 0.1) == 3 for _ in range(50))
    assert tuner.trials == 1


# ----- with the run queue's word (host/run_queue.py): trials only when the cores are contended


def test_free_cores_never_spend_a_step_at_fewer_threads() -> None:
    machine = Machine({2: 0.005, 1: 0.008}, waiting={2: 0.03})  # the HTTP process's few percent
    tuner = tuner_on(machine, wait_aware=True, hold_s=1.0)
    assert tuner.current == 2
    assert not tuner.tuning
    machine.run(tuner, 500)
    machine.per_row = {2: 0.05, 1: 0.08}  # one row left: ten times the time per row, cores still free
    machine.run(tuner, 500, rows=1)
    assert machine.steps_at == {2: 1000}
    assert tuner.trials == 0


def test_a_busy_neighbour_seen_at_the_first_step_starts_a_trial_at_once() -> None:
    machine = Machine({2: 0.08, 1: 0.008}, waiting={2: 0.4, 1: 0.02})
    tuner = tuner_on(machine, wait_aware=True)
    machine.run(tuner, 30)
    assert tuner.current == 1
    # The first step (which seeds the trial) and the trial's one turn at two threads, dropped at once.
    assert machine.steps_at[2] == 2


def test_a_neighbour_arriving_while_holding_every_thread_starts_a_trial() -> None:
    machine = Machine({2: 0.005, 1: 0.008}, waiting={2: 0.03})
    tuner = tuner_on(machine, wait_aware=True)
    machine.run(tuner, 50)
    assert machine.steps_at == {2: 50}
    machine.per_row, machine.waiting = {2: 0.08, 1: 0.009}, {2: 0.4, 1: 0.02}
    machine.run(tuner, 30)
    assert tuner.current == 1
    assert tuner.trials == 1


def test_a_neighbour_leaving_is_found_by_a_trial_when_the_hold_at_fewer_threads_ends() -> None:
    machine = Machine({2: 0.08, 1: 0.008}, waiting={2: 0.4, 1: 0.02})
    tuner = tuner_on(machine, wait_aware=True, hold_s=20.0)
    machine.run(tuner, 30)
    assert tuner.current == 1
    machine.per_row, machine.waiting = {2: 0.005, 1: 0.008}, {2: 0.03}
    machine.run(tuner, 200)
    assert tuner.current == 2


def test_a_contended_warm_up_starts_with_the_fewest_threads() -> None:
    machine = Machine({2: 0.08, 1: 0.008}, waiting={2: 0.4, 1: 0.02})
    tuner = tuner_on(machine, wait_aware=True)
    assert tuner.observe_start(0.5, 0.4 * 0.5 * 2) == 1
    assert tuner.tuning
    machine.run(tuner, 30)
    assert tuner.current == 1
    assert machine.steps_at[2] == 1  # the trial's one turn at two threads, dropped at its first step


def test_a_free_warm_up_keeps_every_thread() -> None:
    tuner = tuner_on(Machine({2: 0.005, 1: 0.008}), wait_aware=True)
    assert tuner.observe_start(0.5, 0.01) == 2
    assert not tuner.tuning
