"""How many compute threads the engine may use: the CPUs this process can really run on, never more.

``os.cpu_count()`` reports the host's cores, but a pod is confined by its affinity mask (cpuset) and by
its cgroup CPU quota (``resources.limits.cpu``). OpenMP threads beyond what the process may use do
not add compute: they wait for each other at every barrier while the kernel time-slices them, and
throughput collapses (measured: 1.4 tok/s instead of ~100 with a busy neighbour on one of two cores).

Nothing here imports torch; ``apply_torch_threads`` does, lazily, and only the engine calls it.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# Environment variables the OpenMP / BLAS runtimes read once, at their first use.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True, slots=True)
class CpuBudget:
    """What bounds this process's CPU use: the affinity mask and the cgroup quota (in cores, or None)."""

    affinity: int
    quota: float | None

    @property
    def cores(self) -> int:
        """Whole cores the process may keep busy: the smaller bound, rounded down, at least 1."""
        limit = float(self.affinity) if self.quota is None else min(float(self.affinity), self.quota)
        return max(1, math.floor(limit + 1e-9))


def affinity_cpus() -> int:
    """CPUs in this process's affinity mask (``os.cpu_count()`` where the platform has no masks)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _own_cgroup_dirs(root: Path, proc_cgroup: Path) -> list[Path]:
    """Directories of this process's cgroup and its ancestors up to ``root``, innermost first.

    ``/proc/self/cgroup`` lines are ``id:controllers:path``; in a container with a cgroup namespace
    the path is ``/`` and the root itself is the process's cgroup.
    """
    paths: list[str] = []
    text = _read(proc_cgroup) or ""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and (parts[1] == "" or "cpu" in parts[1].split(",")):
            paths.append(parts[2])
    dirs: list[Path] = []
    for rel in paths:
        current = root / rel.lstrip("/")
        while True:
            if current not in dirs:
                dirs.append(current)
            if current == root or root not in current.parents:
                break
            current = current.parent
    if root not in dirs:
        dirs.append(root)
    return dirs


def _quota_v2(directory: Path) -> float | None:
    text = _read(directory / "cpu.max")
    if not text:
        return None
    fields = text.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _quota_v1(directory: Path) -> float | None:
    quota_text = _read(directory / "cpu.cfs_quota_us")
    period_text = _read(directory / "cpu.cfs_period_us")
    if quota_text is None or period_text is None:
        return None
    try:
        quota, period = int(quota_text), int(period_text)
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None  # -1: unlimited


def cgroup_cpu_quota(
    root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")
) -> float | None:
    """The tightest CPU quota (cores) on this process's cgroup or its ancestors; None when unlimited.

    cgroup v2 (``cpu.max``: ``<quota> <period>`` or ``max <period>``) and v1 (``cpu.cfs_quota_us`` and
    ``cpu.cfs_period_us``, under ``cpu/``, ``cpu,cpuacct/`` or the root itself) are both read.
    """
    quotas: list[float] = []
    for directory in _own_cgroup_dirs(root, proc_cgroup):
        quota = _quota_v2(directory)
        if quota is not None:
            quotas.append(quota)
    for sub in ("cpu", "cpu,cpuacct", "cpuacct,cpu", ""):
        v1_root = root / sub if sub else root
        if not v1_root.is_dir():
            continue
        for directory in _own_cgroup_dirs(v1_root, proc_cgroup):
            quota = _quota_v1(directory)
            if quota is not None:
                quotas.append(quota)
    return min(quotas) if quotas else None


def cpu_budget(
    root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")
) -> CpuBudget:
    return CpuBudget(affinity=affinity_cpus(), quota=cgroup_cpu_quota(root, proc_cgroup))


def engine_threads(
    requested: int | None = None,
    *,
    budget: CpuBudget | None = None,
    reserve: int = 0,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Compute threads for the engine, never more than the usable cores.

    ``requested`` (the ``--engine-threads`` flag) wins, then an explicit ``OMP_NUM_THREADS``, then the
    usable cores less ``reserve`` kept for other work; each is capped by the usable cores, at least 1.
    """
    cores = (budget or cpu_budget()).cores
    env = os.environ if environ is None else environ
    if requested is None:
        try:
            requested = int(env.get("OMP_NUM_THREADS", "") or 0) or None
        except ValueError:
            requested = None
    if requested is None:
        requested = cores - reserve
    return max(1, min(cores, requested))


def thread_choices(
    requested: int | None = None,
    *,
    budget: CpuBudget | None = None,
    reserve: int = 0,
    environ: Mapping[str, str] | None = None,
) -> tuple[int, ...]:
    """Thread counts the engine may pick between by measured speed (``thread_tuner.py``), most first.

    A count asked for (``--engine-threads`` or ``OMP_NUM_THREADS``) is the only choice. Otherwise: every
    usable core, and that less ``reserve`` (the cores left to other work), since which is faster depends
    on what else runs on the cores.
    """
    env = os.environ if environ is None else environ
    fixed = requested is not None or bool(env.get("OMP_NUM_THREADS"))
    chosen = engine_threads(requested, budget=budget, environ=env)
    if fixed:
        return (chosen,)
    return tuple(sorted({chosen, max(1, chosen - reserve)}, reverse=True))


def thread_env(threads: int) -> dict[str, str]:
    """Environment for a child process whose OpenMP runtime must start with ``threads`` threads."""
    return dict.fromkeys(THREAD_ENV_VARS, str(threads))


def apply_torch_threads(threads: int) -> None:
    """Size torch's intra-op pool (OpenMP) to ``threads``; inter-op work is rare in inference: 1."""
    import torch

    torch.set_num_threads(threads)
    # Only settable before the first parallel work; if too late, the default is harmless.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
