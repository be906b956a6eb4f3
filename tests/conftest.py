"""Session-wide test configuration.

Fixture plugins live beside the harnesses they wrap (the control plane in tests/cluster, tiny models in
tests/fixtures); they are registered here because pytest only honours ``pytest_plugins`` at the root.
"""

from __future__ import annotations

import pytest

pytest_plugins: list[str] = ["tests.cluster.plugin", "tests.fixtures.models", "tests.fixtures.sdk_clients"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A test that asks for the control plane is a cluster test, whatever file it lives in, so
    # `-m "not cluster"` (the unit stage of CI) never starts etcd.
    for item in items:
        if "kube_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)
