"""Where the routing table comes from (``Discovery``: keep a ``RoutingTable`` current).

* ``kubernetes.KubernetesDiscovery``: list-then-watch LLMModels (served name, aliases, load balancing, LoRA
  adapters and the pods that have them loaded; parsed with the ``modelyard.api`` types) and the
  EndpointSlices labelled ``metadata.LABEL_MODEL`` (EndpointSlices inherit their Service's labels), in one
  namespace or all. Each watch (``watch.ResourceCache``) resumes from its last resourceVersion and
  relists after errors (410 Gone included), with capped back-off; only endpoints whose ``ready`` condition
  is not false, and that are not terminating, are routable. Every change rebuilds the snapshot from the
  two caches (``specs.build_specs``, pure) and swaps it in.
* ``static.StaticDiscovery``: a YAML/JSON file (re-read when it changes)::

      models:
        tiny:
          urls: ["http://127.0.0.1:8001", "http://127.0.0.1:8002"]
          aliases: ["tiny-latest"]
          strategy: PrefixHash          # or LeastLoad (default)
          prefixCharLength: 100
          adapters: [sql-lora]          # LoRA adapters every URL serves, or {name: [urls...]}
        embed: "http://127.0.0.1:8003"  # shorthand: one URL, or a list of URLs

* ``secret_keys.SecretKeysWatcher``: the API keys document from a Secret, watched the same way.
"""

from __future__ import annotations

from typing import Protocol

from modelyard.router.table import RoutingTable


class Discovery(Protocol):
    async def run(self, table: RoutingTable) -> None:
        """Keep ``table`` current until cancelled; fill it once as soon as possible."""
