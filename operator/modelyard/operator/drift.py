"""Has a child drifted from what the operator applied? Pure: desired manifest vs live object.

The spec-hash annotation says which manifest was applied last, but not whether someone changed the
object since (`kubectl scale deployment`, `kubectl edit`). This compares the fields the operator sets
with what the object holds now, the way server-side apply sees ownership:

- only fields in the desired manifest count; what the API server defaults or others add is not drift;
- an empty value the API server omits ("", [], {}, null) matches an absent field;
- lists of named items (containers, env, ports, volumes) match by name, other lists by position;
- quantities compare by value ("1024Mi" is "1Gi", "0.5" is "500m"), as the API server canonicalises them;
- except the fields in OWNED_WHOLE, where what someone adds changes behaviour: an extra Service selector
  key selects no pod, a hand-added nodeSelector or env var changes where and how the server runs. There
  anything beyond the manifest is drift too, and `whole_field_patch` puts the field back as a whole
  (server-side apply cannot: it never removes what another field manager set).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eE][+-]?[0-9]+|[KMGTPE]i|[numkMGTPE])?$")
_SUFFIX = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    **{s: Decimal(1024) ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
}

# Paths (`[*]` = every container the manifest names) whose whole value belongs to the operator.
OWNED_WHOLE: dict[str, tuple[str, ...]] = {
    "Service": (".spec.selector",),
    "Deployment": (
        ".spec.template.spec.nodeSelector",
        ".spec.template.spec.tolerations",
        ".spec.template.spec.affinity",
        ".spec.template.spec.containers[*].env",
        ".spec.template.spec.containers[*].envFrom",
        ".spec.template.spec.initContainers[*].env",
    ),
}

# Children whose spec is (mostly) immutable once created: only their metadata and existence count.
METADATA_ONLY = frozenset({"PersistentVolumeClaim"})


def _quantity(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    match = _QUANTITY.match(str(value))
    if match is None:
        return None
    number, suffix = match.groups()
    try:
        if suffix and suffix[0] in "eE":
            return Decimal(number + suffix)
        return Decimal(number) * _SUFFIX[suffix or ""]
    except InvalidOperation:
        return None


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def _same_scalar(desired: Any, live: Any) -> bool:
    if desired == live:
        return True
    if isinstance(desired, str) and isinstance(live, str | int) and not isinstance(live, bool):
        a, b = _quantity(desired), _quantity(live)
        return a is not None and a == b
    return False


def _diff(desired: Any, live: Any, path: str, out: list[str]) -> None:
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            out.append(path or ".")
            return
        for key, value in desired.items():
            if key not in live or live[key] is None:
                if not _empty(value):
                    out.append(f"{path}.{key}")
                continue
            _diff(value, live[key], f"{path}.{key}", out)
    elif isinstance(desired, list):
        if not isinstance(live, list):
            if not (_empty(desired) and live is None):
                out.append(path)
            return
        if not desired:
            return  # we own no items of it: whatever others put there is theirs
        if all(isinstance(d, dict) and "name" in d for d in desired):
            by_name = {item.get("name"): item for item in live if isinstance(item, dict)}
            for item in desired:
                if item["name"] not in by_name:
                    out.append(f"{path}[{item['name']}]")
                else:
                    _diff(item, by_name[item["name"]], f"{path}[{item['name']}]", out)
            return
        if len(desired) != len(live):
            out.append(path)
            return
        for i, (d, v) in enumerate(zip(desired, live, strict=True)):
            _diff(d, v, f"{path}[{i}]", out)
    elif not _same_scalar(desired, live):
        out.append(path)


@dataclass(frozen=True)
class WholeField:
    """One owned-whole field as found in a desired manifest and in the live object."""

    path: str  # `.spec.template.spec.containers[server].env`, as drift reports name it
    pointer: list[str | int]  # where it sits in the live object (JSON pointer parts)
    desired: Any
    live: Any


def _get(obj: Any, keys: list[str]) -> Any:
    for key in keys:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj


def _whole_fields(kind: str | None, desired: dict[str, Any], live: dict[str, Any]) -> list[WholeField]:
    out: list[WholeField] = []
    for pattern in OWNED_WHOLE.get(kind or "", ()):
        head, star, tail = pattern.partition("[*]")
        head_keys = head.strip(".").split(".")
        if not star:
            out.append(WholeField(pattern, list(head_keys), _get(desired, head_keys), _get(live, head_keys)))
            continue
        tail_keys = tail.strip(".").split(".")
        live_items = _get(live, head_keys) or []
        for item in _get(desired, head_keys) or []:
            index = next((i for i, c in enumerate(live_items) if c.get("name") == item["name"]), None)
            if index is None:
                continue  # a missing container is ordinary drift, put back by apply
            out.append(
                WholeField(
                    f"{head}[{item['name']}].{'.'.join(tail_keys)}",
                    [*head_keys, index, *tail_keys],
                    _get(item, tail_keys),
                    _get(live_items[index], tail_keys),
                )
            )
    return out


def _extra(desired: Any, live: Any) -> bool:
    """Does `live` hold more than `desired` sets (keys, named items, items)?"""
    if _empty(live):
        return False
    if _empty(desired):
        return True
    if isinstance(desired, dict) and isinstance(live, dict):
        return bool(live.keys() - desired.keys())
    if isinstance(desired, list) and isinstance(live, list):
        if all(isinstance(d, dict) and "name" in d for d in desired):
            return bool({i.get("name") for i in live if isinstance(i, dict)} - {d["name"] for d in desired})
        return len(live) > len(desired)
    return False


def whole_field_patch(desired: dict[str, Any], live: dict[str, Any]) -> list[dict[str, Any]]:
    """A JSON patch that sets every owned-whole field holding extras back to the desired value exactly.
    Each change of a container's field is guarded by a `test` of the container's name, so a concurrent
    reorder makes the patch fail (and the next event retry) instead of editing the wrong container."""
    ops: list[dict[str, Any]] = []
    for field in _whole_fields(desired.get("kind"), desired, live):
        if not _extra(field.desired, field.live):
            continue
        pointer = "/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in field.pointer)
        if len(field.pointer) > 1 and isinstance(field.pointer[-2], int):
            name = _get_path(live, field.pointer[:-1])["name"]
            ops.append({"op": "test", "path": pointer.rsplit("/", 1)[0] + "/name", "value": name})
        if _empty(field.desired):
            ops.append({"op": "remove", "path": pointer})
        else:
            ops.append({"op": "replace", "path": pointer, "value": field.desired})
    return ops


def _get_path(obj: Any, parts: list[str | int]) -> Any:
    for part in parts:
        obj = obj[part]
    return obj


def drifted(desired: dict[str, Any], live: dict[str, Any]) -> list[str]:
    """The paths (e.g. `.spec.replicas`) where `live` no longer holds what `desired` sets, or holds
    more than it sets in a field the operator owns whole."""
    out: list[str] = []
    meta = desired.get("metadata") or {}
    live_meta = live.get("metadata") or {}
    for key in ("labels", "annotations"):
        _diff(meta.get(key) or {}, live_meta.get(key) or {}, f".metadata.{key}", out)
    owners = {(o.get("uid"), bool(o.get("controller"))) for o in live_meta.get("ownerReferences") or []}
    for ref in meta.get("ownerReferences") or []:
        if (ref.get("uid"), bool(ref.get("controller"))) not in owners:
            out.append(".metadata.ownerReferences")
    if desired.get("kind") not in METADATA_ONLY:
        _diff(desired.get("spec") or {}, live.get("spec") or {}, ".spec", out)
        for field in _whole_fields(desired.get("kind"), desired, live):
            if _extra(field.desired, field.live) and field.path not in out:
                out.append(field.path)
    return out
