"""Read one metric out of a Prometheus text exposition."""

from __future__ import annotations

from collections.abc import Mapping


def sample_sum(text: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    """The sum of ``name``'s samples in ``text`` that carry ``labels`` (others may be present); 0 if none."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        metric, _, label_part = series.partition("{")
        if metric != name:
            continue
        have = dict(part.split("=", 1) for part in label_part.rstrip("}").split(",") if "=" in part)
        if all(have.get(k) == f'"{v}"' for k, v in (labels or {}).items()):
            total += float(value)
    return total
