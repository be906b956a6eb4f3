"""Render the chart's values as a Markdown table from the `# --` comments in values.yaml (helm-docs style).

    python charts/modelyard/hack/values_table.py        # rewrites the table in docs/helm.md

docs/helm.md carries the table between `<!-- values:start -->` and `<!-- values:end -->`; a unit test fails
when it differs from this script's output, so a value cannot be added without being documented.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[1]
DOC = CHART.parents[1] / "docs" / "helm.md"
START, END = "<!-- values:start -->", "<!-- values:end -->"
KEY = re.compile(r"^(\s*)([A-Za-z_][\w]*):(.*)$")


def documented_keys(text: str) -> list[tuple[str, str]]:
    """(dotted key, description) for every key preceded by a `# --` comment, in file order."""
    out: list[tuple[str, str]] = []
    stack: list[tuple[int, str]] = []
    pending: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = [stripped[4:].strip()]
            continue
        if stripped.startswith("#"):
            if pending is not None:
                pending.append(stripped[1:].strip())
            continue
        m = KEY.match(line)
        if not m:
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m.group(2)))
        if pending is not None:
            out.append((".".join(k for _, k in stack), " ".join(pending)))
            pending = None
    return out


def _lookup(values: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        values = values[part]
    return values


def _type(value: Any) -> str:
    return {bool: "bool", int: "int", float: "float", str: "string", list: "list", dict: "object"}.get(
        type(value), "null"
    )


def table() -> str:
    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    rows = ["| Key | Type | Default | Description |", "|---|---|---|---|"]
    for key, description in documented_keys(text):
        value = _lookup(values, key)
        default = json.dumps(value, separators=(",", ":"))
        cell = description.replace("|", "\\|")
        rows.append(f"| `{key}` | {_type(value)} | `{default}` | {cell} |")
    return "\n".join(rows) + "\n"


def render_doc(doc: str) -> str:
    head, rest = doc.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table()}{END}{tail}"


def main() -> int:
    DOC.write_text(render_doc(DOC.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
