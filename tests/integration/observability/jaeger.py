"""A real Jaeger (v1.75.0, built from its Go module by install_jaeger.sh) with in-memory storage, on
free ports: OTLP in over gRPC and HTTP, the query API out. For the trace tests and
bench/tracing_overhead.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.integration.router.procs import Proc
from tests.support.net import free_port

INSTALL = Path(__file__).with_name("install_jaeger.sh")


class JaegerBuildError(RuntimeError):
    pass


def build_jaeger() -> str:
    """The cached binary's path (built on the first call; minutes on a cold cache)."""
    out = subprocess.run([str(INSTALL)], capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise JaegerBuildError(f"jaeger could not be built:\n{out.stderr[-3000:]}")
    return out.stdout.strip().splitlines()[-1]


def start_jaeger(binary: str, tmp: Path) -> tuple[Proc, dict[str, int]]:
    """A started Jaeger and its ports: ``grpc`` and ``http`` (OTLP), ``query`` (HTTP API), ``query_grpc``."""
    ports = {name: free_port() for name in ("grpc", "http", "query", "query_grpc")}
    config = {
        "service": {
            "extensions": ["jaeger_storage", "jaeger_query"],
            "pipelines": {
                "traces": {
                    "receivers": ["otlp"],
                    "processors": ["batch"],
                    "exporters": ["jaeger_storage_exporter"],
                }
            },
            "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "warn"}},
        },
        "extensions": {
            "jaeger_storage": {"backends": {"mem": {"memory": {"max_traces": 100000}}}},
            "jaeger_query": {
                "storage": {"traces": "mem"},
                "http": {"endpoint": f"127.0.0.1:{ports['query']}"},
                "grpc": {"endpoint": f"127.0.0.1:{ports['query_grpc']}"},
            },
        },
        "receivers": {
            "otlp": {
                "protocols": {
                    "grpc": {"endpoint": f"127.0.0.1:{ports['grpc']}"},
                    "http": {"endpoint": f"127.0.0.1:{ports['http']}"},
                }
            }
        },
        "processors": {"batch": {"timeout": "100ms"}},
        "exporters": {"jaeger_storage_exporter": {"trace_storage": "mem"}},
    }
    (tmp / "jaeger.yaml").write_text(yaml.safe_dump(config))
    proc = Proc([binary, "--config", str(tmp / "jaeger.yaml")], ports["query"], log_path=tmp / "jaeger.log")
    return proc.start("/api/services", timeout_s=60), ports
