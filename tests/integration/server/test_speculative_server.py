"""``--speculative-config`` on a real server: vLLM's spelling, vLLM's counters on /metrics, and a
clear refusal of a configuration it cannot run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from tests.fixtures.models import running_server
from tests.integration.server.helpers import metric

pytestmark = pytest.mark.model

CONFIG = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 1, "prompt_lookup_max": 3}


def test_speculative_server_counts_drafts_with_vllms_names(
    tiny_llama_path: Path, server_logs_dir: Path
) -> None:
    args = ["--model", str(tiny_llama_path), "--served-model-name", "tiny-llama", "--max-model-len", "512"]
    with running_server(
        [*args, "--speculative-config", json.dumps(CONFIG)], log_dir=server_logs_dir
    ) as server:
        client = openai.OpenAI(base_url=server.v1, api_key="x")
        prompt = "one two three four five " * 8
        done = client.completions.create(model="tiny-llama", prompt=prompt, max_tokens=40, temperature=0)
        assert done.usage is not None
        drafts = metric(server, "vllm:spec_decode_num_drafts_total", model_name="tiny-llama")
        draft_tokens = metric(server, "vllm:spec_decode_num_draft_tokens_total", model_name="tiny-llama")
        accepted = metric(server, "vllm:spec_decode_num_accepted_tokens_total", model_name="tiny-llama")
    assert drafts > 0
    assert drafts <= draft_tokens <= 3 * drafts
    assert 0 <= accepted <= draft_tokens


def test_an_unsupported_method_is_refused_at_start(tiny_llama_path: Path) -> None:
    bad = json.dumps({"method": "eagle", "num_speculative_tokens": 2})
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "modelyard.server",
            "--model",
            str(tiny_llama_path),
            "--speculative-config",
            bad,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0
    assert "only 'ngram'" in done.stdout + done.stderr
