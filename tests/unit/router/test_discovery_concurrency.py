"""The per-pod concurrency the fair queue uses comes from the LLMModel (or the static file)."""

from __future__ import annotations

from modelyard.router.discovery.specs import MODELYARD_DEFAULT_MAX_NUM_SEQS, model_spec_from_llmmodel
from modelyard.router.discovery.static import parse_static
from tests.unit.router.test_discovery import llmmodel


def test_max_num_seqs_comes_from_the_llmmodel() -> None:
    spec = model_spec_from_llmmodel(llmmodel("m", server={"maxNumSeqs": 8}), [])
    assert spec.max_num_seqs == 8


def test_an_unset_max_num_seqs_is_the_servers_default_for_modelyard_and_unknown_for_peers() -> None:
    assert model_spec_from_llmmodel(llmmodel("m"), []).max_num_seqs == MODELYARD_DEFAULT_MAX_NUM_SEQS == 64
    assert model_spec_from_llmmodel(llmmodel("m", engine="vllm"), []).max_num_seqs is None


def test_the_static_file_can_set_it() -> None:
    (queued, plain) = parse_static('models: {a: {urls: ["http://x:1"], maxNumSeqs: 4}, b: "http://y:1"}')
    assert (queued.max_num_seqs, plain.max_num_seqs) == (4, None)
