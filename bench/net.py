"""Ports for the bench scripts' servers: the tests' own picker (``tests/support/net.py``), so two runs on
one host never collide and no outgoing connection takes a port between its pick and its server's bind.
Imported as ``from net import free_port`` (the scripts run with ``bench/`` first on ``sys.path``)."""

from __future__ import annotations

import sys
from pathlib import Path

_REPO = str(Path(__file__).resolve().parents[1])
if _REPO not in sys.path:
    sys.path.append(_REPO)  # after bench/ and the source roots the script put first

from tests.support.net import free_port  # noqa: E402

__all__ = ["free_port"]
