"""The block manager and its prefix index, on their own (no model, no torch)."""

from __future__ import annotations

import asyncio

import pytest

from modelyard.server.engine.core.blocks import BlockManager, extend_hashes, hash_block
from modelyard.server.engine.core.scheduler import Scheduler
from modelyard.server.engine.core.sequence import Sequence
from modelyard.server.engine.model.sampler import SamplingRow
from modelyard.server.engine.types import GenerationRequest, SamplingParams


def test_allocate_release_and_refuse_when_out_of_blocks() -> None:
    blocks = BlockManager(num_blocks=4, block_size=4, enable_caching=False)
    got = blocks.allocate(3)
    assert got is not None
    assert 0 not in got
    assert (blocks.num_used, blocks.num_free) == (3, 1)
    assert blocks.allocate(2) is None
    assert blocks.num_free == 1  # a refused allocation takes nothing
    blocks.release(got)
    assert (blocks.num_used, blocks.usage()) == (0, 0.0)
    with pytest.raises(RuntimeError):
        blocks.release(got)


def test_hash_chain_names_full_blocks_only_and_depends_on_every_earlier_token() -> None:
    hashes: list[bytes] = []
    extend_hashes(hashes, [1, 2, 3, 4, 5, 6, 7, 8, 9], 4)
    assert len(hashes) == 2  # the partial block [9] is not named
    assert hashes[0] == hash_block(None, [1, 2, 3, 4])
    assert hashes[1] == hash_block(hashes[0], [5, 6, 7, 8])
    other: list[bytes] = []
    extend_hashes(other, [0, 2, 3, 4, 5, 6, 7, 8], 4)
    assert other[1] != hashes[1]  # same block tokens, different prefix


def test_cached_blocks_are_shared_by_refcount_and_kept_after_release() -> None:
    blocks = BlockManager(num_blocks=4, block_size=4)
    names: list[bytes] = []
    extend_hashes(names, list(range(8)), 4)
    mine = blocks.allocate(2)
    assert mine is not None
    for block, name in zip(mine, names, strict=True):
        blocks.register(block, name)
    assert blocks.lookup(names) == mine
    blocks.acquire(mine)  # a second request shares them
    assert blocks.refcount(mine[0]) == 2
    blocks.release(mine)
    blocks.release(mine)
    assert blocks.num_used == 0
    assert blocks.num_cached == 2
    blocks.acquire(blocks.lookup(names))
    assert blocks.num_used == 2


def test_unreferenced_cached_blocks_are_evicted_least_recently_released_first() -> None:
    blocks = BlockManager(num_blocks=3, block_size=2)
    a_names: list[bytes] = []
    b_names: list[bytes] = []
    extend_hashes(a_names, [1, 1, 2, 2], 2)
    extend_hashes(b_names, [3, 3], 2)
    a = blocks.allocate(2)
    b = blocks.allocate(1)
    assert a is not None
    assert b is not None
    for block, name in zip(a + b, a_names + b_names, strict=True):
        blocks.register(block, name)
    blocks.release(a)  # tail block first: a[1] is the least recently released
    blocks.release(b)
    taken = blocks.allocate(1)
    assert taken == [a[1]]
    assert blocks.lookup(a_names) == [a[0]]  # the chain now stops at the evicted block
    assert blocks.lookup(b_names) == b


def test_a_duplicate_prefix_keeps_the_first_block_and_frees_the_copy() -> None:
    blocks = BlockManager(num_blocks=2, block_size=2)
    name = hash_block(None, [5, 5])
    first, second = blocks.allocate(1), blocks.allocate(1)
    assert first is not None
    assert second is not None
    blocks.register(first[0], name)
    blocks.register(second[0], name)
    blocks.release(second)
    assert blocks.num_cached == 1
    assert blocks.lookup([name]) == first


def _seq(key: int, prompt: list[int], max_tokens: int = 4) -> Sequence:
    params = SamplingParams(max_tokens=max_tokens)
    return Sequence(
        key=key,
        request=GenerationRequest(f"r{key}", prompt, params),
        sink=asyncio.Queue(),
        row=SamplingRow(params=params, prompt_token_ids=prompt, stop_token_ids=frozenset()),
    )


def test_scheduler_preempts_the_newest_request_when_a_decode_needs_a_block() -> None:
    blocks = BlockManager(num_blocks=2, block_size=4)
    scheduler = Scheduler(blocks, max_num_seqs=4, max_prefill_tokens=64)
    old, new = _seq(1, [1, 2, 3]), _seq(2, [4, 5, 6])
    scheduler.add(old)
    scheduler.add(new)
    step = scheduler.schedule()
    assert [s for s, _ in step.prefill] == [old, new]
    for seq in (old, new):
        scheduler.computed(seq, 3)
        seq.tokens.append(9)  # sampled
    # Both now need a 5th slot = a second block each; only the old one gets it.
    old.tokens.append(9)
    scheduler.computed(old, 1)
    step = scheduler.schedule()
    assert step.preempted == [new]
    assert step.decode == [old]
    assert (new.block_ids, new.num_computed, list(scheduler.waiting)) == ([], 0, [new])
    assert new.tokens == [4, 5, 6, 9]  # kept, recomputed on re-admission


def test_scheduler_admits_with_prefix_hits_and_feeds_only_the_suffix() -> None:
    blocks = BlockManager(num_blocks=8, block_size=4)
    scheduler = Scheduler(blocks, max_num_seqs=4, max_prefill_tokens=64)
    first = _seq(1, list(range(10)))
    scheduler.add(first)
    scheduler.schedule()
    scheduler.computed(first, 10)
    scheduler.finish(first)
    second = _seq(2, [*list(range(8)), 42, 43, 44])
    scheduler.add(second)
    step = scheduler.schedule()
    assert step.prefill == [(second, 3)]
    assert (second.num_computed, second.num_cached_tokens) == (8, 8)
    assert (scheduler.prefix_queries, scheduler.prefix_hits) == (21, 8)
