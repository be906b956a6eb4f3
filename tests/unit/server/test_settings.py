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


def test_lora_flags_take_vllms_forms() -> None:
    settings = parse_settings(
        ["--enable-lora", "--lora-modules", "a=/x", "b=/y", "--max-loras", "2",
         "--lora-modules", '{"name": "c", "path": "/p,q"}', "--max-lora-rank", "64",
         "--max-cpu-loras", "4", "--allowed-lora-paths", "/srv/a", "/srv/b"]
    )  # fmt: skip
    assert [(m.name, m.path) for m in settings.lora_modules] == [("a", "/x"), ("b", "/y"), ("c", "/p,q")]
    assert (settings.max_loras, settings.max_lora_rank, settings.max_cpu_loras) == (2, 64, 4)
    assert [str(p) for p in settings.lora_roots] == ["/srv/a", "/srv/b"]
    config = settings.engine_config("/m")
    assert (config.enable_lora, config.max_loras, config.max_lora_rank, config.max_cpu_loras) == (
        True,
        2,
        64,
        4,
    )


def test_runtime_lora_updating_follows_vllms_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_settings(["--enable-lora"]).allow_runtime_lora_updating is False
    monkeypatch.setenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "True")
    assert parse_settings(["--enable-lora"]).allow_runtime_lora_updating is True


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lora-modules", "a=/x"], "needs --enable-lora"),
        (["--enable-lora", "--lora-modules", "a=/x", "--lora-modules", "a=/y"], "distinct"),
        (["--enable-lora", "--served-model-name", "m", "--lora-modules", "m=/x"], "clash"),
        (["--enable-lora", "--max-loras", "4", "--max-cpu-loras", "2"], "at least --max-loras"),
    ],
)
def test_inconsistent_lora_flags_are_refused(args: list[str], message: str) -> None:
    with pytest.raises(Exception, match=message):
        parse_settings(args)
