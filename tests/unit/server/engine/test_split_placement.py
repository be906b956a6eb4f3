"""A model split across two devices (both `cpu` here: accelerate's hooks still move every activation
between the parts, as between GPUs) generates the same tokens at temperature 0 as on one device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from modelyard.server.engine import EngineConfig
from modelyard.server.engine.engine import TorchEngine
from modelyard.server.engine.model.loader import LoadedModel, load_model, module_groups, resolve_devices
from tests.unit.server.engine.helpers import prompt_of, run, tokens


@pytest.fixture(scope="module")
def split_models(model_dirs: dict[str, Path]) -> dict[str, LoadedModel]:
    return {
        kind: load_model(EngineConfig(model=str(path), device="cpu", tensor_parallel_size=2))
        for kind, path in model_dirs.items()
    }


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_split_load_says_where_each_layer_went(split_models: dict[str, LoadedModel], kind: str) -> None:
    loaded = split_models[kind]
    assert loaded.devices == ("cpu", "cpu")
    if kind == "llama":
        assert loaded.placement == "layers 0 on cpu, layers 1 on cpu (embeddings on cpu, head on cpu)"
    else:  # GPT-2's tied embedding + head outweigh its tiny layers: both layers go on the second part
        assert loaded.placement == "layers 0-1 on cpu (embeddings on cpu, head on cpu)"
    hooked = [name for name, m in loaded.model.named_modules() if hasattr(m, "_hf_hook")]
    assert hooked, "the parts are dispatched with accelerate hooks"


def test_load_progress_names_the_placement(model_dirs: dict[str, Path]) -> None:
    stages: list[str] = []
    load_model(
        EngineConfig(model=str(model_dirs["llama"]), device="cpu", tensor_parallel_size=2),
        lambda stage, _: stages.append(stage),
    )
    assert "loading weights: layers 0 on cpu, layers 1 on cpu (embeddings on cpu, head on cpu)" in stages


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
async def test_split_model_gives_the_same_tokens_as_one_device(
    split_models: dict[str, LoadedModel], loaded_models: dict[str, LoadedModel], kind: str
) -> None:
    results = []
    for loaded in (loaded_models[kind], split_models[kind]):
        engine = TorchEngine(loaded, EngineConfig(model=loaded.name, device="cpu"))
        await engine.start()
        try:
            results.append(
                [tokens(await run(engine, prompt_of(n, n), max_tokens=12, ignore_eos=True)) for n in (5, 17)]
            )
        finally:
            await engine.stop()
    single, split = results
    assert split == single
    assert all(len(t) == 12 for t in split)


def test_module_groups_of_llama_and_tied_gpt2(loaded_models: dict[str, LoadedModel]) -> None:
    llama = module_groups(loaded_models["llama"].model, 2)
    assert llama.layers_prefix == "model.layers"
    assert llama.before == ["model.embed_tokens"]
    assert sorted(llama.after) == ["lm_head", "model.norm", "model.rotary_emb"]
    assert len(llama.layer_bytes) == 2
    assert llama.layer_bytes[0] > 0
    gpt2 = module_groups(loaded_models["gpt2"].model, 2)
    assert gpt2.layers_prefix == "transformer.h"
    # GPT-2's head is tied to its token embedding: both stay on the first device.
    assert "lm_head" in gpt2.before
    assert "transformer.wte" in gpt2.before


def test_cpu_defaults_to_one_device_and_gpus_must_exist() -> None:
    assert resolve_devices(torch.device("cpu"), None) == ["cpu"]
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs 4 GPUs"):
            resolve_devices(torch.device("cuda"), 4)
