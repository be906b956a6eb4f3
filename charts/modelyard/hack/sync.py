"""Copy into the chart what it mirrors from the operator and router (CRDs, RBAC rules).

    python charts/modelyard/hack/sync.py

tests/unit/chart/test_drift.py fails when the chart's copies differ from their sources; this script is the
fix it names.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parents[1]
REPO = CHART.parents[1]


def rbac_file(comment: str, namespaced: list[dict[str, object]]) -> str:
    return comment + yaml.safe_dump({"cluster": [], "namespaced": namespaced}, sort_keys=False)


def main() -> int:
    sys.path[:0] = [str(REPO / "operator"), str(REPO / "router")]
    from modelyard.operator import rbac as operator_rbac
    from modelyard.router import rbac as router_rbac

    shutil.copyfile(
        REPO / "crds" / "modelyard.dev_llmmodels.yaml",
        CHART / "files" / "crds" / "modelyard.dev_llmmodels.yaml",
    )
    shutil.copyfile(REPO / "crds" / "kopf.dev_peerings.yaml", CHART / "crds" / "kopf.dev_peerings.yaml")
    header = (
        "# Copied by charts/modelyard/hack/sync.py from {src}; tests/unit/chart/test_drift.py checks it.\n"
    )
    where = (
        "# namespaced: granted where the component works (ClusterRole when cluster-wide, Roles per watched\n"
        "# namespace).\n"
    )
    (CHART / "files" / "rbac" / "operator.yaml").write_text(
        rbac_file(header.format(src="modelyard.operator.rbac.RULES") + where, operator_rbac.RULES)
    )
    (CHART / "files" / "rbac" / "router.yaml").write_text(
        rbac_file(
            header.format(src="modelyard.router.rbac.ROUTING_RULES")
            + where
            + "# The API-key Secret rule (keys_secret_rules) is templated in templates/rbac.yaml.\n",
            router_rbac.ROUTING_RULES,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
