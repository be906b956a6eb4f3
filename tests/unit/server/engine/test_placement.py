"""Placement planning: which decoder layers go on which device (pure, no torch)."""

from __future__ import annotations

import pytest

from modelyard.server.engine.model.placement import Placement, PlacementError, plan_layers

GIB = 2**30


def test_equal_devices_get_contiguous_equal_runs() -> None:
    p = plan_layers(["cuda:0", "cuda:1"], [1] * 8)
    assert p.layer_devices == [0, 0, 0, 0, 1, 1, 1, 1]
    assert (p.first, p.last) == ("cuda:0", "cuda:1")


def test_four_devices_eighty_layers() -> None:
    p = plan_layers([f"cuda:{i}" for i in range(4)], [1] * 80)
    assert [p.layer_devices.count(d) for d in range(4)] == [20, 20, 20, 20]
    assert p.layer_devices == sorted(p.layer_devices)  # contiguous: activations cross each boundary once


def test_embeddings_and_head_weigh_on_the_first_and_last_device() -> None:
    p = plan_layers(["a", "b"], [1] * 10, before_bytes=4, after_bytes=0)
    assert p.layer_devices.count(0) < p.layer_devices.count(1)


def test_free_memory_weights_the_split() -> None:
    p = plan_layers(["cuda:0", "cuda:1"], [GIB] * 12, free_bytes=[30 * GIB, 10 * GIB])
    assert p.layer_devices.count(0) == 9
    assert p.layer_devices.count(1) == 3


def test_a_model_that_does_not_fit_is_refused_with_the_numbers() -> None:
    with pytest.raises(PlacementError, match=r"do not fit 2 device\(s\)"):
        plan_layers(["cuda:0", "cuda:1"], [10 * GIB] * 16, free_bytes=[80 * GIB, 80 * GIB])


def test_140_gib_of_weights_fit_on_four_80_gib_gpus_but_not_one() -> None:
    layers = [int(1.7 * GIB)] * 80  # ~Llama-70B in bf16
    four = plan_layers(
        [f"cuda:{i}" for i in range(4)], layers, free_bytes=[79 * GIB] * 4, before_bytes=2 * GIB
    )
    assert set(four.layer_devices) == {0, 1, 2, 3}
    with pytest.raises(PlacementError):
        plan_layers(["cuda:0"], layers, free_bytes=[79 * GIB], before_bytes=2 * GIB)


def test_one_device_takes_everything() -> None:
    assert plan_layers(["cpu"], [5, 5, 5]).layer_devices == [0, 0, 0]


def test_more_devices_than_layers_leaves_the_tail_devices_layerless_but_valid() -> None:
    p = plan_layers(["a", "b", "c", "d"], [1, 1])
    assert p.layer_devices == [0, 1]


def test_describe_and_device_map() -> None:
    p = Placement(["cuda:0", "cuda:1"], [0, 0, 1, 1, 1])
    assert p.describe() == "layers 0-1 on cuda:0, layers 2-4 on cuda:1 (embeddings on cuda:0, head on cuda:1)"
    assert p.device_map("model.layers", ["model.embed_tokens"], ["model.norm", "lm_head"]) == {
        "model.embed_tokens": "cuda:0",
        "model.layers.0": "cuda:0",
        "model.layers.1": "cuda:0",
        "model.layers.2": "cuda:1",
        "model.layers.3": "cuda:1",
        "model.layers.4": "cuda:1",
        "model.norm": "cuda:1",
        "lm_head": "cuda:1",
    }


def test_no_device_is_an_error() -> None:
    with pytest.raises(PlacementError):
        plan_layers([], [1])
