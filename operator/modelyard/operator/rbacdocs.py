"""The RBAC tables in docs/operator.md and docs/helm.md, generated from the rules the components
declare (operator/rbac.py, router/rbac.py), as docs/llmmodel.md is from the CRD models.

    python -m modelyard.operator.rbacdocs          # rewrite the tables in place
    python -m modelyard.operator.rbacdocs --check  # exit 1 when a table is stale (a unit test does too)

Each table sits between `<!-- rbac:<component>:begin -->` and `<!-- rbac:<component>:end -->`.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from modelyard.operator import rbac
from modelyard.router import rbac as router_rbac

ROOT = Path(__file__).resolve().parents[3]
DOCS = ("docs/operator.md", "docs/helm.md")

ROUTER_REASONS = {
    "llmmodels": "the routing table: served names, aliases, load-balancing settings",
    "endpointslices": "the ready pods of each model's Service",
    "secrets": "only the API-key Secret it is given (`resourceNames`), when keys are on",
}


def table(rules: Sequence[Mapping[str, Any]], reasons: Mapping[str, str]) -> str:
    rows = ["| API group | Resources | Verbs | Why |", "|---|---|---|---|"]
    for rule in rules:
        group = rule["apiGroups"][0] or "core"
        resources = ", ".join(rule["resources"])
        if rule.get("resourceNames"):
            resources += f" ({', '.join(rule['resourceNames'])} only)"
        why = reasons.get(rule["resources"][0], "")
        rows.append(f"| {group} | {resources} | {', '.join(rule['verbs'])} | {why} |")
    return "\n".join(rows)


def tables() -> dict[str, str]:
    return {
        "operator": table(rbac.RULES, rbac.REASONS),
        "router": table(
            [*router_rbac.ROUTING_RULES, *router_rbac.keys_secret_rules("<keys Secret>")], ROUTER_REASONS
        ),
    }


def _replacement(body: str) -> Callable[[re.Match[str]], str]:
    return lambda m: f"{m.group(1)}{body}\n{m.group(2)}"


def render(text: str) -> str:
    for component, body in tables().items():
        pattern = re.compile(
            rf"(<!-- rbac:{component}:begin -->\n).*?(<!-- rbac:{component}:end -->)", re.DOTALL
        )
        text = pattern.sub(_replacement(body), text)
    return text


def main(argv: list[str] | None = None) -> int:
    check = (sys.argv[1:] if argv is None else argv) == ["--check"]
    stale = []
    for doc in DOCS:
        path = ROOT / doc
        text = path.read_text()
        new = render(text)
        if new != text:
            stale.append(doc)
            if not check:
                path.write_text(new)
    if check and stale:
        sys.stderr.write(
            f"stale RBAC tables in {', '.join(stale)}: run python -m modelyard.operator.rbacdocs\n"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
