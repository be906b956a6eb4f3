"""Thread sizing: the engine never runs more compute threads than the CPUs it may really use."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.server.engine.host import threads
from modelyard.server.engine.host.threads import CpuBudget, cgroup_cpu_quota, engine_threads, thread_env


def _cgroup(tmp_path: Path, proc_line: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "sys-fs-cgroup"
    root.mkdir()
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(proc_line + "\n")
    return root, proc


def test_cgroup_v2_quota_in_cores(tmp_path: Path) -> None:
    root, proc = _cgroup(tmp_path, "0::/", {"cpu.max": "150000 100000"})
    assert cgroup_cpu_quota(root, proc) == pytest.approx(1.5)


def test_cgroup_v2_without_a_limit(tmp_path: Path) -> None:
    root, proc = _cgroup(tmp_path, "0::/", {"cpu.max": "max 100000"})
    assert cgroup_cpu_quota(root, proc) is None


def test_no_cgroup_files_means_no_quota(tmp_path: Path) -> None:
    root, proc = _cgroup(tmp_path, "0::/", {})
    assert cgroup_cpu_quota(root, proc) is None


def test_cgroup_v2_the_tightest_ancestor_wins(tmp_path: Path) -> None:
    # A pod's container cgroup without a limit, inside a pod cgroup limited to 2 cores.
    root, proc = _cgroup(
        tmp_path,
        "0::/kubepods/pod1/ctr",
        {
            "kubepods/cpu.max": "max 100000",
            "kubepods/pod1/cpu.max": "200000 100000",
            "kubepods/pod1/ctr/cpu.max": "max 100000",
        },
    )
    assert cgroup_cpu_quota(root, proc) == pytest.approx(2.0)


def test_cgroup_v1_quota_and_period(tmp_path: Path) -> None:
    root, proc = _cgroup(
        tmp_path,
        "4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc",
        {
            "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "50000",
            "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000",
        },
    )
    assert cgroup_cpu_quota(root, proc) == pytest.approx(0.5)


def test_cgroup_v1_unlimited_is_minus_one(tmp_path: Path) -> None:
    root, proc = _cgroup(
        tmp_path,
        "4:cpu,cpuacct:/",
        {"cpu,cpuacct/cpu.cfs_quota_us": "-1", "cpu,cpuacct/cpu.cfs_period_us": "100000"},
    )
    assert cgroup_cpu_quota(root, proc) is None


@pytest.mark.parametrize(
    ("affinity", "quota", "cores"),
    [(8, None, 8), (8, 2.0, 2), (8, 2.5, 2), (2, 16.0, 2), (4, 0.5, 1)],
)
def test_usable_cores_are_the_smaller_bound_rounded_down(
    affinity: int, quota: float | None, cores: int
) -> None:
    assert CpuBudget(affinity, quota).cores == cores


def test_engine_threads_default_to_the_usable_cores() -> None:
    assert engine_threads(budget=CpuBudget(16, 4.0), environ={}) == 4
    assert engine_threads(budget=CpuBudget(2, None), reserve=1, environ={}) == 1
    assert engine_threads(budget=CpuBudget(1, None), reserve=1, environ={}) == 1


def test_an_explicit_request_or_omp_setting_is_honoured_but_capped() -> None:
    budget = CpuBudget(4, None)
    assert engine_threads(2, budget=budget, environ={}) == 2
    assert engine_threads(64, budget=budget, environ={}) == 4
    assert engine_threads(budget=budget, environ={"OMP_NUM_THREADS": "3"}) == 3
    assert engine_threads(budget=budget, environ={"OMP_NUM_THREADS": "32"}) == 4
    assert engine_threads(budget=budget, environ={"OMP_NUM_THREADS": "junk"}) == 4
    assert engine_threads(1, budget=budget, environ={"OMP_NUM_THREADS": "3"}) == 1


def test_this_process_budget_respects_its_affinity() -> None:
    assert 1 <= threads.cpu_budget().cores <= threads.affinity_cpus()


def test_child_environment_sets_every_runtime() -> None:
    assert thread_env(3) == {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3", "OPENBLAS_NUM_THREADS": "3"}


def test_without_a_request_the_engine_may_pick_all_cores_or_all_but_the_reserved_one() -> None:
    from modelyard.server.engine.host.threads import thread_choices

    assert thread_choices(budget=CpuBudget(2, None), reserve=1, environ={}) == (2, 1)
    assert thread_choices(budget=CpuBudget(16, 4.0), reserve=1, environ={}) == (4, 3)
    assert thread_choices(budget=CpuBudget(1, None), reserve=1, environ={}) == (1,)
    # Asked for: exactly that, no tuning.
    assert thread_choices(2, budget=CpuBudget(4, None), reserve=1, environ={}) == (2,)
    assert thread_choices(budget=CpuBudget(4, None), reserve=1, environ={"OMP_NUM_THREADS": "3"}) == (3,)
