"""Cut the slice of the official OpenAI spec that Modelyard's tests read, into the repository.

The full spec (openai/openai-openapi, MIT) is 3 MB; the tests validate bodies against the component
schemas of the endpoints Modelyard serves and the fuzz suite generates requests from their operations.
This keeps those paths and every schema they reach through ``$ref`` (plus ``ErrorResponse``), byte-for-byte
as the spec has them, so a bare clone carries everything its tests read.

    python scripts/cut_openai_spec.py /path/to/openai-openapi/openapi.yaml

writes ``tests/fixtures/openai/openapi.yaml``; keep ``tests/fixtures/openai/LICENSE`` beside it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

PATHS = (
    "/chat/completions",
    "/completions",
    "/embeddings",
    "/models",
    "/models/{model}",
    "/responses",
    "/responses/{response_id}",
)
EXTRA_SCHEMAS = ("ErrorResponse", "Error")
OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "openai" / "openapi.yaml"
_PREFIX = "#/components/"


def _refs(node: Any) -> set[str]:
    found: set[str] = set()
    stack = [node]
    while stack:
        cur = stack.pop()
        if isinstance(cur, dict):
            ref = cur.get("$ref")
            if isinstance(ref, str) and ref.startswith(_PREFIX):
                found.add(ref[len(_PREFIX) :])
            stack.extend(cur.values())
        elif isinstance(cur, list):
            stack.extend(cur)
    return found


def cut(spec: dict[str, Any]) -> dict[str, Any]:
    paths = {p: spec["paths"][p] for p in PATHS if p in spec["paths"]}
    components: dict[str, Any] = spec["components"]
    todo = _refs(paths) | {f"schemas/{name}" for name in EXTRA_SCHEMAS}
    seen: set[str] = set()
    while todo:
        ref = todo.pop()
        if ref in seen:
            continue
        seen.add(ref)
        kind, _, name = ref.partition("/")
        todo |= _refs(components[kind][name]) - seen
    kept: dict[str, Any] = {}
    for ref in sorted(seen):
        kind, _, name = ref.partition("/")
        kept.setdefault(kind, {})[name] = components[kind][name]
    if "securitySchemes" in components:
        kept["securitySchemes"] = components["securitySchemes"]
    return {
        "openapi": spec["openapi"],
        "info": spec["info"],
        "servers": spec.get("servers", []),
        "security": spec.get("security", []),
        "paths": paths,
        "components": kept,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path, help="the full openapi.yaml")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with args.spec.open("rb") as fh:
        spec = yaml.load(fh, Loader=loader)
    sliced = cut(spec)
    header = (
        "# Slice of the official OpenAI spec (openai/openai-openapi commit f85dbe2; MIT, see LICENSE\n"
        "# beside this file), cut by scripts/cut_openai_spec.py: the endpoints Modelyard serves and\n"
        "# every schema they reference.\n"
        "# Do not edit by hand; re-run the script on a newer spec instead.\n"
    )
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    body = yaml.dump(sliced, Dumper=dumper, sort_keys=False, allow_unicode=True, width=120)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(header + body, encoding="utf-8")
    n = len(sliced["components"].get("schemas", {}))
    print(f"{args.out}: {len(sliced['paths'])} paths, {n} schemas", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
