"""Router tracing is off by default and free when off: no SDK import, no exporter, no-op spans."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from modelyard.router.tracing import endpoint_from, setup, span
from tests.integration.router.procs import REPO


def test_off_by_default_the_router_loads_no_sdk_and_creates_no_exporter(tmp_path: Path) -> None:
    config = tmp_path / "models.json"
    config.write_text('{"models": {}}')
    code = textwrap.dedent(
        """
        import sys
        from modelyard.router.app import PROXY, create_app
        from modelyard.router.settings import RouterSettings
        app = create_app(RouterSettings(mode="static", static_config=sys.argv[1]))
        assert app[PROXY].tracing is None
        prefixes = ("opentelemetry.sdk", "opentelemetry.exporter")
        loaded = sorted(m for m in sys.modules if m.startswith(prefixes))
        assert not loaded, loaded
        print("ok")
        """
    )
    env = {"PYTHONPATH": f"{REPO / 'operator'}:{REPO}", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(config)], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"


def test_endpoint_from_the_flag_or_the_standard_variables_and_a_no_op_span() -> None:
    assert endpoint_from(None, {}) is None
    assert endpoint_from(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}) == "http://c:4318"
    assert endpoint_from("http://c:4317", {"OTEL_SDK_DISABLED": "true"}) is None
    assert setup(None, {}) is None
    with span(None, "router.hold") as nothing:
        assert nothing is None
