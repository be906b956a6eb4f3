"""Server settings: the operator's exact flags, env vars under MODELYARD_SERVER_, flags over env."""

from __future__ import annotations

import pytest

from modelyard.server.settings import parse_settings

OPERATOR_ARGS = [
    "--model",
    "/models/pvc/qwen",
    "--served-model-name",
    "qwen",
    "--alias",
    "a",
    "--alias",
    "org/b",
    "--task",
    "generate",
    "--dtype",
    "bfloat16",
    "--max-model-len",
    "4096",
    "--max-num-seqs",
    "32",
    "--host",
    "0.0.0.0",
    "--port",
    "8000",
]


def test_the_operators_command_line_parses() -> None:
    s = parse_settings(OPERATOR_ARGS)
    assert s.model_names == ["qwen", "a", "org/b"]
    assert (s.task, s.dtype, s.max_model_len, s.max_num_seqs) == ("generate", "bfloat16", 4096, 32)
    assert (s.host, s.port) == ("0.0.0.0", 8000)
    config = s.engine_config("/models/pvc/qwen")
    assert (config.model, config.max_num_seqs, config.dtype) == ("/models/pvc/qwen", 32, "bfloat16")


def test_env_vars_configure_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELYARD_SERVER_MAX_QUEUE", "7")
    monkeypatch.setenv("MODELYARD_SERVER_REVISION", "abc123")
    monkeypatch.setenv("MODELYARD_SERVER_API_KEY", "from-env")
    monkeypatch.setenv("MODELYARD_SERVER_PORT", "9000")
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    s = parse_settings(["--port", "8001"])
    assert (s.max_queue, s.revision, s.port) == (7, "abc123", 8001)
    assert s.api_key is not None
    assert s.api_key.get_secret_value() == "from-env"
    assert s.engine_config("m").hf_token == "hf_secret"
    assert "hf_secret" not in repr(s)


def test_defaults_serve_a_local_tiny_model_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    s = parse_settings([])
    assert (s.model, s.primary_name, s.host, s.port, s.task) == (
        "tiny-llama",
        "tiny-llama",
        "127.0.0.1",
        8000,
        "generate",
    )


@pytest.mark.parametrize(
    "args",
    [
        ["--task", "chat"],
        ["--dtype", "fp8"],
        ["--max-num-seqs", "0"],
        ["--served-model-name", "m", "--alias", "m"],
    ],
)
def test_invalid_settings_are_refused(args: list[str]) -> None:
    with pytest.raises((SystemExit, ValueError)):
        parse_settings(args)


def test_kv_flags_reach_the_engine() -> None:
    s = parse_settings(["--model", "m", "--decode-kv", "paged", "--no-enable-prefix-caching"])
    config = s.engine_config("m")
    assert (config.decode_kv, config.enable_prefix_caching) == ("paged", False)
    assert parse_settings(["--model", "m"]).engine_config("m").decode_kv == "auto"
    with pytest.raises(ValueError, match="'auto', 'slab' or 'paged'"):
        parse_settings(["--model", "m", "--decode-kv", "dense"])
