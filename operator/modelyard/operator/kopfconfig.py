"""kopf tuning, applied once in the start-up handler. Each setting says why it is not the default."""

from __future__ import annotations

import logging

import kopf

from modelyard.api import metadata as md
from modelyard.operator.settings import OperatorSettings

# kopf bookkeeping lives in annotations under our own prefix, never in status: the CRD's structural
# schema would prune status.kopf, and annotations cost no extra status-subresource PATCH.
PERSISTENCE_PREFIX = md.GROUP


def configure_kopf(settings: kopf.OperatorSettings, ours: OperatorSettings) -> None:
    # Finite watch timeouts: a silently dead watch connection (load balancer idle cut) would otherwise
    # stall the operator forever (kopf #204, #698). The server closes the stream first; the client
    # timeout is a backstop slightly longer than it.
    settings.watching.server_timeout = ours.watch_server_timeout
    settings.watching.client_timeout = ours.watch_server_timeout + 60
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = ours.request_timeout
    # Bounded concurrency. kopf holds a worker per object until it idles for idle_timeout (default
    # 5 s), so a small limit with the default idle time serialises a burst of new models (16 workers x
    # 5 s idle = 3 models/s); a short idle time frees slots as soon as an object is handled.
    settings.queueing.worker_limit = ours.worker_limit
    settings.queueing.idle_timeout = ours.worker_idle_seconds
    # kopf 1.45 posts log messages (handler successes and failures alike) as Events only with
    # posting.loggers, and then one per retry. We post the Events users need ourselves, once per
    # transition and with the API server's own message: ModelReady, Unschedulable, CrashLoopBackOff,
    # ReconcileFailed (handlers.reconcile_recorded). Explicit, because the default changed across kopf
    # releases.
    settings.posting.loggers = False
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = md.FIELD_MANAGER
    settings.posting.event_name_prefix = "modelyard-"
    settings.persistence.finalizer = f"{md.GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PERSISTENCE_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PERSISTENCE_PREFIX, key="last-handled-configuration"
    )
    # Watch only our own children server-side instead of every Pod and Deployment in the cluster.
    selector = f"{md.LABEL_MANAGED_BY}={md.FIELD_MANAGER}"
    for plural in ("pods", "deployments", "services", "persistentvolumeclaims", "poddisruptionbudgets"):
        settings.watching.label_selectors[plural] = selector
    # No dynamic CRD/namespace scanning: it needs cluster-wide list/watch on CRDs and namespaces,
    # which the least-privilege RBAC does not grant. The LLMModel CRD must exist before start-up.
    settings.scanning.disabled = True
    if ours.peering_name is not None:
        settings.peering.name = ours.peering_name
        settings.peering.mandatory = True
        settings.peering.lifetime = ours.peering_lifetime
