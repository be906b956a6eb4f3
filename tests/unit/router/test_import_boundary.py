"""The router ships in the operator image: it must not pull torch, the server or the operator."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support.roots import pythonpath

PROBE = """
import sys, pkgutil, importlib
import modelyard.router
for mod in pkgutil.walk_packages(modelyard.router.__path__, "modelyard.router."):
    importlib.import_module(mod.name)
import lightkube, lightkube.resources.discovery_v1, lightkube.generic_resource  # what discovery loads lazily
bad = sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "transformers",
             "modelyard.server", "modelyard.operator", "kopf")))
print(",".join(bad))
"""


def test_router_modules_import_without_torch_server_or_operator() -> None:
    env = dict(os.environ, PYTHONPATH=pythonpath())
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
