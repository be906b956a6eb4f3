"""End to end on the test control plane: the operator, the router and the model servers all really run.

See stack.py: every request in these tests goes SDK -> router -> a pod the operator created, through the
EndpointSlice the control plane built from that pod's real readiness.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.client import ClusterClient
from tests.integration.e2e.stack import Stack, open_stack


@pytest.fixture(scope="module")
def stack(
    kube_cluster: ClusterClient, tiny_llama_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with open_stack(kube_cluster, tiny_llama_path.parent, Path(tmp_path_factory.mktemp("e2e"))) as st:
        yield st
