"""The compiled twins of the router's tracing pieces (modelyard/otlp/*.c), which `make test` builds."""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


def compiled_twin(python: T, chosen: T) -> T:
    """``chosen``, what the product picked over ``python``, which must be the compiled twin: a test of the
    compiled code must fail, not pass on the Python one, when the install did not build it."""
    assert chosen is not python, f"the compiled twin of {python!r} was not built (hatch_build.py)"
    return chosen
