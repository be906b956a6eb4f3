"""Who may use a served name when several LLMModels claim it: one rule, for the operator (which reports
the loser on its status) and the router (which does not route the loser).

Pure and lenient: it reads LLMModel bodies as plain dicts (the router does not validate specs), so both
sides see exactly the same winners and losers.

The rule: LLMModels are taken oldest first (`metadata.creationTimestamp`, then namespace, then name, so
ties are deterministic). Each claims its served name (`spec.servedName`, default `metadata.name`), its
aliases and its LoRA adapters' names (clients call an adapter by name, like a model). A model any of
whose names is already held by an earlier winner loses *entirely*: it is not routed under any name,
and it claims nothing, so it cannot make a third model lose. A model is never half-routed (its own
name but not the alias or adapter its clients were told to use).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

ModelRef = tuple[str, str]  # (namespace, name)

# Sorts after every RFC 3339 timestamp: an object without one (not yet stored) is the newest.
_NOT_CREATED = "~"


@dataclass(frozen=True)
class NameClaim:
    namespace: str
    name: str
    created: str
    names: tuple[str, ...]  # served name first, then aliases, then adapters, without duplicates

    @property
    def ref(self) -> ModelRef:
        return (self.namespace, self.name)

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> NameClaim:
        meta = body.get("metadata") or {}
        spec = body.get("spec") or {}
        name = str(meta.get("name") or "")
        served = spec.get("servedName") or name
        aliases = [a for a in (spec.get("aliases") or []) if isinstance(a, str)]
        adapters = [a["name"] for a in (spec.get("adapters") or []) if isinstance(a, dict) and "name" in a]
        return cls(
            namespace=str(meta.get("namespace") or "default"),
            name=name,
            created=str(meta.get("creationTimestamp") or _NOT_CREATED),
            names=tuple(dict.fromkeys([str(served), *aliases, *map(str, adapters)])),
        )


@dataclass(frozen=True)
class NameConflict:
    """Why a model lost: `name` is already served by `holder`, created first or, in the same second
    (`tie`), first by namespace and name."""

    name: str
    holder: ModelRef
    tie: bool = False

    def message(self) -> str:
        namespace, name = self.holder
        why = "created in the same second, first by namespace/name" if self.tie else "created earlier"
        return (
            f'name "{self.name}" is already served by LLMModel {namespace}/{name} ({why}): '
            "this model is not routed; change spec.servedName, spec.aliases or spec.adapters"
        )


def _precedence(claim: NameClaim) -> tuple[str, str, str]:
    return (claim.created, claim.namespace, claim.name)


def name_conflicts(bodies: Iterable[Mapping[str, Any]]) -> dict[ModelRef, NameConflict]:
    """The losing LLMModels, each with the conflict that made it lose. Winners are absent."""
    holders: dict[str, NameClaim] = {}
    losers: dict[ModelRef, NameConflict] = {}
    for claim in sorted((NameClaim.of(b) for b in bodies), key=_precedence):
        taken = next((n for n in claim.names if n in holders), None)
        if taken is not None:
            holder = holders[taken]
            losers[claim.ref] = NameConflict(taken, holder.ref, tie=holder.created == claim.created)
            continue
        for name in claim.names:
            holders[name] = claim
    return losers
