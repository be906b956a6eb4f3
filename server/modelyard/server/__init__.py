"""The Modelyard model server: an OpenAI-compatible HTTP API over a continuous-batching torch engine."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("modelyard")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+src"
