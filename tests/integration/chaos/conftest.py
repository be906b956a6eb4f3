"""The chaos stack for the module: its own control plane (the scenarios restart its API server and etcd,
which the session's shared ``kube_cluster`` must never see), two runner nodes, the operator and the
router twice each, and the model's two pods Ready."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.harness import ControlPlane, ControlPlaneError, find_binaries
from tests.integration.chaos.stack import ChaosStack, open_chaos_stack


@pytest.fixture(scope="module")
def chaos_stack(tiny_llama_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosStack]:
    try:
        bin_dir = find_binaries()
    except ControlPlaneError as exc:
        pytest.fail(str(exc), pytrace=False)
    work = Path(tmp_path_factory.mktemp("chaos"))
    with ControlPlane(bin_dir) as plane, open_chaos_stack(plane, tiny_llama_path.parent, work) as stack:
        yield stack
