"""What keeps the engine process small: a causal LM's weights are the process's own memory, not views
of the checkpoint's mapping (whose pages would stay resident after the fast path frees the originals),
except a tied embedding whose head computes over a packed copy (it only looks rows up), and a CPU
engine does not import the optional packages it never runs (triton, scipy, cuda-python's bindings)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from modelyard.server.engine import EngineConfig
from modelyard.server.engine.engine import TorchEngine
from modelyard.server.engine.model.lm_head import MIN_VOCAB, PackedLMHead
from modelyard.server.engine.model.loader import load_model
from modelyard.server.engine.proc.process_server import GPU_DEVICE_NODES
from tests.unit.server.engine.conftest import build
from tests.unit.server.engine.helpers import greedy

pytestmark = pytest.mark.model


def _mapped(model: torch.nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if not p.untyped_storage().resizable()]


def test_a_causal_lms_weights_leave_the_checkpoint_mapping(model_dirs: dict[str, Path]) -> None:
    loaded = load_model(EngineConfig(model=str(model_dirs["gpt2"]), device="cpu"))
    model: torch.nn.Module = loaded.model
    assert not _mapped(model)
    head, embeddings = model.get_output_embeddings(), model.get_input_embeddings()  # type: ignore[operator]
    assert head.weight is embeddings.weight  # still tied: the Parameter kept, its data copied


def test_an_encoder_keeps_its_mapping(model_dirs: dict[str, Path]) -> None:
    # An encoder reads a few rows of its embedding table: the mapping holds only those pages.
    loaded = load_model(EngineConfig(model=str(model_dirs["llama"]), device="cpu", task="embed"))
    assert _mapped(loaded.model)


async def test_a_tied_embedding_behind_a_packed_head_stays_a_view_and_the_tokens_stay(tmp_path: Path) -> None:
    # The head computes over its own packed copy, so the embedding only looks rows up: as an encoder's,
    # its mapping holds only those pages. Everything else is the process's own.
    path = build("llama", tmp_path / "tied", vocab=MIN_VOCAB + 700, tied=True)
    config = EngineConfig(model=str(path), device="cpu", dtype="float32")
    loaded = load_model(config)
    model: torch.nn.Module = loaded.model
    assert isinstance(model.get_output_embeddings(), PackedLMHead)  # type: ignore[operator]
    assert _mapped(model) == ["model.embed_tokens.weight"]
    plain: Any = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    plain.eval()
    prompt = [5, 17, 300, MIN_VOCAB + 600, 9]
    with torch.no_grad():
        expected = plain.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, pad_token_id=0)[
            0, len(prompt) :
        ]
    engine = TorchEngine(loaded, config)
    engine.release_unused_weights()
    await engine.start()
    try:
        assert await greedy(engine, prompt, 12) == expected.tolist()
    finally:
        await engine.stop()


PROBE = textwrap.dedent(
    """
    import json, sys
    from modelyard.server.engine.proc.process_server import skip_unused_packages
    from modelyard.server.engine.types import EngineConfig
    config = EngineConfig(model="m", device=sys.argv[2], trust_remote_code=sys.argv[1] == "1")
    hidden = skip_unused_packages(config)
    import torch
    import transformers.modeling_utils
    from transformers.utils import is_scipy_available
    assert torch.ones(2, 2).matmul(torch.ones(2, 2)).sum().item() == 8.0
    loaded = sorted(m for m in ("triton", "scipy", "cuda") if sys.modules.get(m) is not None)
    print(json.dumps({"hidden": hidden, "scipy": is_scipy_available(), "loaded": loaded}))
    """
)


@pytest.mark.parametrize(("remote_code", "device"), [(False, "cpu"), (True, "cpu"), (False, "auto")])
def test_a_cpu_engine_process_skips_triton_scipy_and_cuda_bindings(remote_code: bool, device: str) -> None:
    if device == "auto" and any(Path(node).exists() for node in GPU_DEVICE_NODES):
        pytest.skip("a GPU device node: auto asks torch, which loads the CUDA bindings")
    done = subprocess.run(
        [sys.executable, "-c", PROBE, "1" if remote_code else "0", device],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    result = done.stdout.strip().splitlines()[-1]
    if remote_code:  # a model's own code may import them
        assert '"hidden": []' in result
    else:
        assert result == '{"hidden": ["triton", "scipy", "cuda"], "scipy": false, "loaded": []}'
