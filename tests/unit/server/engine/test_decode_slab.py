"""CPU decode reads a per-group working copy of the KV (gathered once, appended a column per step), and
gives exactly the tokens that gathering from the paged pool every step gives."""

from __future__ import annotations

import asyncio

import pytest
import torch

from modelyard.server.engine.model.decode_slab import GroupSlab
from tests.unit.server.engine.helpers import prompt_of, request, tokens

pytestmark = pytest.mark.model


async def _staggered(engine, prompts: list[list[int]], **params: object) -> list[list[int]]:
    """Requests that arrive one after another, so rows join and leave a running decode group."""

    async def one(i: int, prompt: list[int]) -> list[int]:
        await asyncio.sleep(0.02 * i)
        out: list[int] = []
        async for o in engine.generate(request(prompt, **params)):
            out.extend(o.token_ids)
        return out

    return await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
async def test_working_copy_and_paged_gather_give_the_same_tokens(make_engine, kind: str) -> None:
    prompts = [prompt_of(n, i) for i, n in enumerate([5, 40, 17, 3, 60, 9])]
    lengths = [12, 30, 7, 25, 16, 40]

    async def with_layout(decode_kv: str) -> list[list[int]]:
        engine = await make_engine(kind, decode_kv=decode_kv, block_size=8)

        async def one(i: int) -> list[int]:
            await asyncio.sleep(0.02 * i)
            out: list[int] = []
            params = {"max_tokens": lengths[i], "ignore_eos": True}
            async for o in engine.generate(request(prompts[i], **params)):
                out.extend(o.token_ids)
            return out

        return await asyncio.gather(*(one(i) for i in range(len(prompts))))

    assert await with_layout("slab") == await with_layout("paged")


async def test_a_steady_group_gathers_its_history_once(make_engine, monkeypatch) -> None:
    engine = await make_engine(decode_kv="slab")
    gathers: list[tuple[int, ...]] = []
    plan = GroupSlab.gather_plan.__func__  # type: ignore[attr-defined]

    def counting(cls, keys, *args, **kwargs):  # type: ignore[no-untyped-def]
        gathers.append(keys)
        return plan(cls, keys, *args, **kwargs)

    monkeypatch.setattr(GroupSlab, "gather_plan", classmethod(counting))
    outs = [o async for o in engine.generate(request(prompt_of(10), max_tokens=30, ignore_eos=True))]
    assert len(tokens(outs)) == 30
    assert len(gathers) == 1  # 29 decode steps, one gather


async def test_the_working_copy_grows_past_its_headroom_without_changing_tokens(make_engine) -> None:
    prompt = prompt_of(6, 3)
    slab = await make_engine(decode_kv="slab")
    paged = await make_engine(decode_kv="paged")
    # 100 steps: several regrowths of the 32-column headroom.
    a = [o async for o in slab.generate(request(prompt, max_tokens=100, ignore_eos=True))]
    b = [o async for o in paged.generate(request(prompt, max_tokens=100, ignore_eos=True))]
    assert tokens(a) == tokens(b)


async def test_preempted_rows_rejoin_with_the_same_tokens_on_the_working_copy(make_engine) -> None:
    prompts = [prompt_of(10, i) for i in range(3)]
    engine = await make_engine(kv_budget_tokens=64, decode_kv="slab", enable_prefix_caching=False)
    alone = [await _staggered(engine, [p], max_tokens=40, ignore_eos=True) for p in prompts]
    together = await _staggered(engine, prompts, max_tokens=40, ignore_eos=True)
    assert together == [a[0] for a in alone]
    assert engine.stats().num_preemptions > 0


def test_a_changed_group_copies_its_kept_rows_bit_for_bit(loaded_models, make_runner, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Rows join (shorter and longer than the group), leave (the longest too) and change order: the
    copy built from the last step's copy gives the logits of one gathered from the pool."""
    loaded = loaded_models["llama"]
    rebuilt = GroupSlab.rebuilt
    copies: list[int] = []

    def counting(self, *args):  # type: ignore[no-untyped-def]
        copies.append(1)
        return rebuilt(self, *args)

    monkeypatch.setattr(GroupSlab, "rebuilt", counting)
    groups = [(0, 1), (0, 1), (0, 1, 2), (0, 2), (0, 2, 3), (3, 0), (3, 0, 1)]
    out: dict[bool, list[torch.Tensor]] = {}
    for reuse in (True, False):
        runner = make_runner(loaded, decode_slab=True)
        runner.reuse_slabs = reuse
        runner.allocate(32)
        tables = [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16]]
        held = [5, 12, 9, 20]
        logits: list[torch.Tensor] = []
        with torch.inference_mode():
            runner.prefill(tables, [0] * 4, [prompt_of(n, i) for i, n in enumerate(held)])
            for step, group in enumerate(groups):
                runner.begin_decode()
                rows = list(group)
                logits.append(
                    runner.decode(
                        [tables[r] for r in rows],
                        [held[r] for r in rows],
                        [7 + step] * len(rows),
                        keys=group,
                    )
                )
                for r in rows:
                    held[r] += 1
        out[reuse] = logits
    assert copies  # the kept rows were copied, not gathered
    for with_reuse, gathered in zip(out[True], out[False], strict=True):
        assert torch.equal(with_reuse, gathered)
