"""KWOK stages for the test cluster: upstream's fast defaults, plus the pod runner's own path.

Pods that opt in to the runner (their ``nodeSelector`` carries :data:`RUNNER_LABEL`) are left out of the
fast ``pod-ready`` and ``pod-delete`` stages: KWOK only starts them (phase Running, a pod IP, Ready
*False*), the runner (tests/cluster/podrunner.py) turns Ready on and off from the container's real
readiness probe, and deletes the pod once its process has exited, as a kubelet does. Every other pod
behaves exactly as before (Running and Ready within a second, deleted at once).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

RUNNER_LABEL = "modelyard.test/runner"
RUNNER_KEY = f'.spec.nodeSelector["{RUNNER_LABEL}"]'
# Stages that would race the runner (make a pod Ready, or delete it before its process drained).
FAST_POD_STAGES = frozenset({"pod-ready", "pod-delete"})

POD_IPS = (
    '{{ $podIPs := PodIPsWith .spec.nodeName false ( or .metadata.uid "" ) '
    '( or .metadata.name "" ) ( or .metadata.namespace "" ) }}\n'
)

RUNNER_START_STAGE: dict[str, Any] = {
    "apiVersion": "kwok.x-k8s.io/v1alpha1",
    "kind": "Stage",
    "metadata": {"name": "pod-runner-start"},
    "spec": {
        "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
        "selector": {
            "matchExpressions": [
                {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"},
                {"key": ".status.phase", "operator": "In", "values": ["Pending"]},
                {"key": RUNNER_KEY, "operator": "Exists"},
            ]
        },
        "next": {
            # Running with an IP, containers started but not ready: the runner takes it from here.
            "statusTemplate": """\
{{ $now := Now }}
conditions:
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: Initialized
- lastTransitionTime: {{ $now | Quote }}
  status: "False"
  reason: ContainersNotReady
  type: Ready
- lastTransitionTime: {{ $now | Quote }}
  status: "False"
  reason: ContainersNotReady
  type: ContainersReady
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: false
  started: true
  restartCount: 0
  state:
    running:
      startedAt: {{ $now | Quote }}
{{ end }}
{{ $hostIPs := NodeIPsWith .spec.nodeName }}
{{ with $hostIPs }}
hostIP: {{ index . 0 | Quote }}
hostIPs:
{{ range . }}
- ip: {{ . | Quote }}
{{ end }}
{{ end }}
"""
            + POD_IPS
            + """{{ with $podIPs }}
podIP: {{ index . 0 | Quote }}
podIPs:
{{ range . }}
- ip: {{ . | Quote }}
{{ end }}
{{ end }}
phase: Running
startTime: {{ $now | Quote }}
"""
        },
    },
}


def compose(default_stages: Path, dest: Path) -> Path:
    """Write upstream's stages with the runner exclusions, plus the runner's start stage, to ``dest``."""
    docs = [d for d in yaml.safe_load_all(default_stages.read_text()) if d]
    for doc in docs:
        if doc.get("kind") == "Stage" and doc["metadata"]["name"] in FAST_POD_STAGES:
            exprs = doc["spec"].setdefault("selector", {}).setdefault("matchExpressions", [])
            exprs.append({"key": RUNNER_KEY, "operator": "DoesNotExist"})
    docs.append(RUNNER_START_STAGE)
    dest.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return dest
