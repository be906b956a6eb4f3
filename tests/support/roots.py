"""The repository's source roots, for the PYTHONPATH of the processes tests and bench scripts start.

``modelyard`` is one PEP 420 namespace package spread over these folders; pyproject.toml lists the
same ones (hatch packages and dev-mode-dirs, pytest pythonpath, ruff src, mypy_path).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The operator (and the API package), the router, the model server, and the shared modelyard/otlp.
SOURCE_ROOTS = ("operator", "router", "server", ".")


def source_roots(tree: Path = REPO) -> list[str]:
    """The roots of one checkout (this one by default), as path strings."""
    return [str(tree / root) if root != "." else str(tree) for root in SOURCE_ROOTS]


def pythonpath(*first: str | Path, tree: Path = REPO) -> str:
    """A PYTHONPATH value: ``first`` (a shim folder, say), then the roots of ``tree``."""
    return os.pathsep.join([*map(str, first), *source_roots(tree)])
