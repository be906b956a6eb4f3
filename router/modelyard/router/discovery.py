"""Where the routing table comes from.

* :class:`KubernetesDiscovery`: list-then-watch LLMModels (served name, aliases, load balancing, LoRA
  adapters and the pods that have them loaded; parsed with the ``modelyard.api`` types) and the
  EndpointSlices labelled ``metadata.LABEL_MODEL``
  (EndpointSlices inherit their Service's labels), in one namespace or all. Each watch resumes from its
  last resourceVersion and relists after errors (410 Gone included), with capped back-off; only
  endpoints whose ``ready`` condition is not false, and that are not terminating, are routable. Every
  change rebuilds the snapshot from the two caches and swaps it in.
* :class:`StaticDiscovery`: a YAML/JSON file (re-read when it changes)::

      models:
        tiny:
          urls: ["http://127.0.0.1:8001", "http://127.0.0.1:8002"]
          aliases: ["tiny-latest"]
          strategy: PrefixHash          # or LeastLoad (default)
          prefixCharLength: 100
          adapters: [sql-lora]          # LoRA adapters every URL serves, or {name: [urls...]}
        embed: "http://127.0.0.1:8003"  # shorthand: one URL, or a list of URLs
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from modelyard.api import metadata
from modelyard.api.llmmodel import Engine, LLMModel
from modelyard.api.names import NameClaim, name_conflicts
from modelyard.router.adapters import StaticAdapters, adapters_of, static_adapters
from modelyard.router.metrics import RouterMetrics
from modelyard.router.table import ModelSpec, RoutingTable, Strategy

log = logging.getLogger(__name__)

# The model server's --max-num-seqs default (server/modelyard/server/settings.py): what a modelyard pod
# batches when its LLMModel leaves maxNumSeqs unset. Peer engines size theirs at run time, so without
# maxNumSeqs the router does not queue in front of them.
MODELYARD_DEFAULT_MAX_NUM_SEQS = 64


class Discovery(Protocol):
    async def run(self, table: RoutingTable) -> None:
        """Keep ``table`` current until cancelled; fill it once as soon as possible."""


# ---- static file ------------------------------------------------------------------------------------


class StaticModel(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    urls: list[str] = Field(min_length=0)
    aliases: list[str] = Field(default_factory=list)
    strategy: Strategy = Strategy.LEAST_LOAD
    prefix_char_length: int | None = Field(None, ge=1, alias="prefixCharLength")
    load_factor: float | None = Field(None, ge=1.0, alias="meanLoadFactor")
    replication: int | None = Field(None, ge=1)
    max_num_seqs: int | None = Field(None, ge=1, alias="maxNumSeqs")  # per pod; enables the fair queue
    adapters: StaticAdapters = Field(default_factory=list)
    engine: Engine = Engine.MODELYARD  # how a cut stream continues (migration.py)

    @field_validator("urls")
    @classmethod
    def _http_urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"backend URL {url!r} must start with http:// or https://")
        return [u.rstrip("/") for u in urls]


def parse_static(text: str | bytes) -> list[ModelSpec]:
    """Parse a static routing file; raises ValueError (pydantic's included) when malformed."""
    data: Any = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError("static config must be a mapping with a `models` key")
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise ValueError("`models` must map model names to backends")
    specs = []
    for name, value in models.items():
        if isinstance(value, str):
            value = {"urls": [value]}
        elif isinstance(value, list):
            value = {"urls": value}
        entry = StaticModel.model_validate(value)
        specs.append(
            ModelSpec(
                name=str(name),
                endpoints=tuple(entry.urls),
                aliases=tuple(entry.aliases),
                strategy=entry.strategy,
                prefix_char_length=entry.prefix_char_length,
                load_factor=entry.load_factor,
                replication=entry.replication,
                source=f"static:{name}",
                max_num_seqs=entry.max_num_seqs,
                adapters=static_adapters(entry.adapters, entry.urls),
                engine=entry.engine.value,
            )
        )
    return specs


class FileWatcher:
    """Calls ``apply`` with a file's content at start and whenever its mtime/size change (polled)."""

    def __init__(self, path: Path, apply: Callable[[bytes], None], interval_s: float = 2.0) -> None:
        self.path = path
        self.apply = apply
        self.interval_s = interval_s
        self._seen: tuple[int, int] | None = None

    def check(self) -> bool:
        """Apply the file if it changed; True when applied. Raises on the first read (fail fast)."""
        stat = self.path.stat()
        sig = (stat.st_mtime_ns, stat.st_size)
        if sig == self._seen:
            return False
        content = self.path.read_bytes()
        self.apply(content)
        self._seen = sig
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                if self.check():
                    log.info("reloaded %s", self.path)
            except Exception as exc:  # keep the last good version; the file may be mid-write
                log.error("cannot reload %s: %s", self.path, exc)


class StaticDiscovery:
    def __init__(self, path: Path, interval_s: float = 2.0) -> None:
        self.path = path
        self.interval_s = interval_s
        self._watcher: FileWatcher | None = None

    async def run_once(self, table: RoutingTable) -> None:
        """Load the file now; raises when it is missing or malformed."""
        self._watcher = FileWatcher(self.path, lambda raw: table.replace(parse_static(raw)), self.interval_s)
        self._watcher.check()

    async def run(self, table: RoutingTable) -> None:
        if self._watcher is None:
            await self.run_once(table)
        assert self._watcher is not None
        await self._watcher.run()


# ---- Kubernetes ----------------------------------------------------------------------------------------


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


class WatchSource(Protocol):
    """The one Kubernetes operation discovery needs: a list and a watch from its resourceVersion."""

    async def list(self) -> tuple[str, list[dict[str, Any]]]: ...

    def watch(self, resource_version: str) -> Any: ...  # async iterator of (event type, object dict)


class LightkubeSource:
    def __init__(self, client: Any, resource: Any, namespace: str, labels: Mapping[str, Any] | None) -> None:
        self.client = client
        self.resource = resource
        self.namespace = namespace or None
        self.labels = labels

    async def list(self) -> tuple[str, list[dict[str, Any]]]:
        it = self.client.list(self.resource, namespace=self.namespace or "*", labels=self.labels)
        items = [obj.to_dict() async for obj in it]
        return it.resourceVersion, items

    async def watch(self, resource_version: str) -> Any:
        async for kind, obj in self.client.watch(
            self.resource,
            namespace=self.namespace or "*",
            labels=self.labels,
            resource_version=resource_version,
        ):
            yield kind, obj.to_dict()


class ResourceCache:
    """list+watch one resource kind into a dict, resuming after errors; calls ``on_change`` per update."""

    def __init__(
        self,
        kind: str,
        source: WatchSource,
        on_change: Callable[[], None],
        metrics: RouterMetrics,
        backoff_max_s: float = 10.0,
    ) -> None:
        self.kind = kind
        self.source = source
        self.on_change = on_change
        self.metrics = metrics
        self.backoff_max_s = backoff_max_s
        self.items: dict[tuple[str, str], dict[str, Any]] = {}
        self.synced = asyncio.Event()

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                version, items = await self.source.list()
                self.items = {_key(o): o for o in items}
                self.synced.set()
                self.on_change()
                failures = 0
                async for event, obj in self.source.watch(version):
                    if event == "DELETED":
                        self.items.pop(_key(obj), None)
                    elif event in ("ADDED", "MODIFIED"):
                        self.items[_key(obj)] = obj
                    else:
                        continue  # BOOKMARK
                    self.metrics.discovery_events.labels(self.kind).inc()
                    self.on_change()
                    failures = 0
                log.info("%s watch ended; relisting", self.kind)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                self.metrics.discovery_errors.labels(self.kind).inc()
                delay = retry_delay(exc, failures, self.backoff_max_s)
                log.warning("%s list/watch failed (%s); retrying in %.2fs", self.kind, exc, delay)
                await asyncio.sleep(delay)


def retry_delay(exc: BaseException, failures: int, backoff_max_s: float) -> float:
    """Capped exponential back-off, except while the API server answers 429/5xx: it is back (a restarted
    kube-apiserver says "storage is (re)initializing" for a while), so retry soon instead of waiting out
    a back-off that grew during the outage."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(status, int) and (status == 429 or status >= 500):
        return min(backoff_max_s, 0.5)
    return min(backoff_max_s, 0.25 * 2.0 ** min(failures, 6))


def _key(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


class KubernetesDiscovery:
    def __init__(
        self,
        namespace: str,
        metrics: RouterMetrics,
        client_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.namespace = namespace
        self.metrics = metrics
        self.client_factory = client_factory

    def _client(self) -> Any:
        if self.client_factory is not None:
            return self.client_factory()
        from lightkube import AsyncClient  # only this module talks to the Kubernetes API

        return AsyncClient()

    async def run(self, table: RoutingTable) -> None:
        from lightkube import operators
        from lightkube.generic_resource import create_namespaced_resource
        from lightkube.resources.discovery_v1 import EndpointSlice

        llmmodel = create_namespaced_resource(
            metadata.GROUP, metadata.VERSION, metadata.KIND, metadata.PLURAL
        )
        client = self._client()
        models_cache: ResourceCache
        slices_cache: ResourceCache

        def rebuild() -> None:
            if models_cache.synced.is_set() and slices_cache.synced.is_set():
                table.replace(build_specs(models_cache.items, slices_cache.items))

        models_cache = ResourceCache(
            "LLMModel", LightkubeSource(client, llmmodel, self.namespace, None), rebuild, self.metrics
        )
        slices_cache = ResourceCache(
            "EndpointSlice",
            LightkubeSource(
                client, EndpointSlice, self.namespace, {metadata.LABEL_MODEL: operators.exists()}
            ),
            rebuild,
            self.metrics,
        )
        tasks: list[Awaitable[None]] = [models_cache.run(), slices_cache.run()]
        try:
            await asyncio.gather(*tasks)
        finally:
            close = getattr(client, "close", None)
            if close is not None:
                await close()


class SecretKeysWatcher:
    """Watches one Secret (by name) and hands its keys document to ``apply`` (None when it is gone)."""

    def __init__(
        self,
        name: str,
        namespace: str,
        data_key: str,
        apply: Callable[[bytes | None], None],
        metrics: RouterMetrics,
        client_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.name = name
        self.namespace = namespace
        self.data_key = data_key
        self.apply = apply
        self.metrics = metrics
        self.client_factory = client_factory

    async def run(self) -> None:
        import base64

        from lightkube import AsyncClient
        from lightkube.resources.core_v1 import Secret

        client = self.client_factory() if self.client_factory else AsyncClient()
        namespace = self.namespace or client.namespace

        def on_change() -> None:
            obj = cache.items.get((namespace, self.name))
            if obj is None:
                self.apply(None)
                return
            encoded = (obj.get("data") or {}).get(self.data_key)
            self.apply(base64.b64decode(encoded) if encoded else b"")

        source = _NamedSource(client, Secret, namespace, self.name)
        cache = ResourceCache("Secret", source, on_change, self.metrics)
        await cache.run()


class _NamedSource:
    """list/watch of a single object via a metadata.name field selector (works with resourceNames RBAC)."""

    def __init__(self, client: Any, resource: Any, namespace: str, name: str) -> None:
        self.client = client
        self.resource = resource
        self.namespace = namespace
        self.name = name

    async def list(self) -> tuple[str, list[dict[str, Any]]]:
        it = self.client.list(self.resource, namespace=self.namespace, fields={"metadata.name": self.name})
        items = [obj.to_dict() async for obj in it]
        return it.resourceVersion, items

    async def watch(self, resource_version: str) -> Any:
        async for kind, obj in self.client.watch(
            self.resource,
            namespace=self.namespace,
            fields={"metadata.name": self.name},
            resource_version=resource_version,
        ):
            yield kind, obj.to_dict()
