"""Compiles the router's span recorder and its export queue (modelyard/otlp/_request_spans.c,
_span_queue.c) when the package is built or installed, editable installs included. Without a C compiler the
package still works: the router then records with request_spans.py and queues with span_queue.py, the same
spans at about four times the instructions (docs/observability.md, "Stop 31")."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCES = [Path("modelyard/otlp/_request_spans.c"), Path("modelyard/otlp/_span_queue.c")]


def compile_module(source: Path) -> Path | None:
    """The extension module next to its source (rebuilt only when the source is newer), or None when it
    cannot be compiled here."""
    built = source.with_name(source.stem + str(sysconfig.get_config_var("EXT_SUFFIX")))
    if built.exists() and built.stat().st_mtime >= source.stat().st_mtime:
        return built
    compiler = shlex.split(str(sysconfig.get_config_var("CC") or "cc"))
    # Written beside it and renamed over it: a router running the old one keeps its mapped file.
    partial = built.with_name(f".{built.name}.{os.getpid()}")
    command = [
        *compiler, "-O2", "-fPIC", "-shared", "-Wall", f"-I{sysconfig.get_paths()['include']}",
        str(source), "-o", str(partial),
    ]  # fmt: skip
    try:
        subprocess.run(command, check=True, capture_output=True, text=True)
        os.replace(partial, built)
    except (OSError, subprocess.CalledProcessError) as exc:
        partial.unlink(missing_ok=True)
        detail = exc.stderr if isinstance(exc, subprocess.CalledProcessError) else exc
        print(f"modelyard: {source.name} was not compiled ({detail}); the router uses its Python twin",
              file=sys.stderr)  # fmt: skip
        return None
    return built


class RecorderBuildHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        for source in SOURCES:
            built = compile_module(Path(self.root) / source)
            if built is None or version == "editable":  # an editable install imports it from the tree
                continue
            build_data["pure_python"] = False
            build_data["infer_tag"] = True
            build_data["force_include"][str(built)] = f"modelyard/otlp/{built.name}"
