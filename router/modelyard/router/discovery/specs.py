"""Pure: LLMModels and their EndpointSlices -> the routing table's ModelSpecs."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from modelyard.api import metadata
from modelyard.api.llmmodel import Engine, LLMModel
from modelyard.api.names import NameClaim, name_conflicts
from modelyard.router.adapters import adapters_of
from modelyard.router.table import ModelSpec, Strategy

log = logging.getLogger(__name__)

# The model server's --max-num-seqs default (server/modelyard/server/settings.py): what a modelyard pod
# batches when its LLMModel leaves maxNumSeqs unset. Peer engines size theirs at run time, so without
# maxNumSeqs the router does not queue in front of them.
MODELYARD_DEFAULT_MAX_NUM_SEQS = 64


def model_spec_from_llmmodel(
    obj: Mapping[str, Any], endpoints: Iterable[str], pods: Mapping[str, str] | None = None
) -> ModelSpec:
    """Pure: an LLMModel body + its ready endpoint URLs (``pods``: pod name -> URL, for those whose
    slice names the pod) -> ModelSpec, read through the API's own types (``modelyard.api.llmmodel``), so
    the router sees exactly the fields the CRD defines. Raises ``pydantic.ValidationError`` for a body
    the CRD would not have admitted."""
    model = LLMModel.from_body(obj)
    lb = model.spec.load_balancing
    created = (obj.get("metadata") or {}).get("creationTimestamp")
    created_s = 0
    if isinstance(created, str):
        try:
            created_s = int(datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp())
        except ValueError:
            created_s = 0
    return ModelSpec(
        name=model.served_name,
        endpoints=tuple(endpoints),
        aliases=tuple(model.spec.aliases),
        strategy=Strategy(lb.strategy.value),
        # Unset on the object: the router's own default (prefix_char_length) applies.
        prefix_char_length=lb.prefix_char_length if "prefix_char_length" in lb.model_fields_set else None,
        source=f"{model.namespace}/{model.name}",
        created=created_s,
        max_num_seqs=model.spec.server.max_num_seqs
        or (MODELYARD_DEFAULT_MAX_NUM_SEQS if model.spec.engine is Engine.MODELYARD else None),
        adapters=adapters_of(model, pods or {}),
        engine=model.spec.engine.value,
    )


def ready_urls(slice_obj: Mapping[str, Any]) -> list[str]:
    """Pure: base URLs of an EndpointSlice's ready endpoints, on the model server's port."""
    return [url for url, _ in ready_endpoints(slice_obj)]


def ready_endpoints(slice_obj: Mapping[str, Any]) -> list[tuple[str, str | None]]:
    """Pure: (base URL, pod name from ``targetRef``, or None) of an EndpointSlice's ready endpoints."""
    ports = slice_obj.get("ports") or []
    port = next((p.get("port") for p in ports if p.get("name") == metadata.SERVER_PORT_NAME), None)
    if port is None and ports:
        port = ports[0].get("port")
    if port is None:
        return []
    # IPv4/IPv6 pod IPs from Services; FQDN slices (hand-made, e.g. for an external backend) are used as is.
    ipv6 = slice_obj.get("addressType") == "IPv6"
    out: list[tuple[str, str | None]] = []
    for ep in slice_obj.get("endpoints") or []:
        conditions = ep.get("conditions") or {}
        # Per the EndpointSlice API, a nil `ready` means unknown and is to be treated as ready. A
        # terminating pod gets no new request even where `ready` stays true (publishNotReadyAddresses):
        # it is draining its in-flight streams (preStop, then the server's graceful shutdown).
        if conditions.get("ready") is False or conditions.get("terminating") is True:
            continue
        addresses = ep.get("addresses") or []
        if not addresses:
            continue
        host = f"[{addresses[0]}]" if ipv6 else addresses[0]
        ref = ep.get("targetRef") or {}
        pod = ref.get("name") if ref.get("kind", "Pod") == "Pod" else None
        out.append((f"http://{host}:{port}", pod or None))
    return out


def build_specs(
    models: Mapping[tuple[str, str], Mapping[str, Any]],
    slices: Mapping[tuple[str, str], Mapping[str, Any]],
) -> list[ModelSpec]:
    """Pure: join LLMModels (keyed ns/name) with slices (keyed ns/name) by namespace + LABEL_MODEL."""
    by_model: dict[tuple[str, str], list[str]] = {}
    pods: dict[tuple[str, str], dict[str, str]] = {}
    for (ns, _), sl in slices.items():
        label = ((sl.get("metadata") or {}).get("labels") or {}).get(metadata.LABEL_MODEL)
        if label:
            for url, pod in ready_endpoints(sl):
                by_model.setdefault((ns, label), []).append(url)
                if pod is not None:
                    pods.setdefault((ns, label), {})[pod] = url
    # Oldest first so that, on a served-name clash, the model that had the name first keeps it.
    ordered = sorted(
        models.items(), key=lambda kv: ((kv[1].get("metadata") or {}).get("creationTimestamp") or "", kv[0])
    )
    # A model that loses a served-name clash (the operator reports it as NameConflict) is not routed at
    # all: same rule as the operator's, from modelyard.api.names.
    losers = name_conflicts(models.values())
    specs = []
    for key, obj in ordered:
        if NameClaim.of(obj).ref in losers:
            continue
        try:
            specs.append(model_spec_from_llmmodel(obj, by_model.get(key, ()), pods.get(key)))
        except ValidationError as exc:  # the API server validates first; this is a stale or foreign object
            log.warning("LLMModel %s/%s not routable: %s", key[0], key[1], exc.errors()[:3])
    return specs
