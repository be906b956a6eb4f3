"""The CUDA math libraries' zero-initialised data a CPU engine process hands back (``host/library_bss.py``):
the zero-fill ranges come from the library's ELF program headers, torch still computes on CPU (and the
process still exits cleanly) once they went, and a real engine process's greedy tokens stay
transformers' own."""

from __future__ import annotations

import _ctypes
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from modelyard.server.engine import EngineConfig, GenerationRequest, SamplingParams
from modelyard.server.engine.host.library_bss import load_addresses, zero_fill_segments
from modelyard.server.engine.proc.process import EngineClient


def test_zero_fill_segments_come_from_the_writable_load_segment(tmp_path: Path) -> None:
    # Every C extension has a .bss: the part of its writable segment past the file's bytes.
    segments = zero_fill_segments(Path(_ctypes.__file__))
    assert segments
    assert all(0 < lo < hi for lo, hi in segments)
    text = tmp_path / "not-elf.so"
    text.write_text("not a library")
    assert zero_fill_segments(text) == []
    assert zero_fill_segments(tmp_path / "missing.so") == []


def test_load_addresses_are_the_mappings_at_file_offset_zero() -> None:
    maps = textwrap.dedent(
        """\
        7f0000000000-7f0000400000 r--p 00000000 08:01 42   /venv/nvidia/cu13/lib/libcublasLt.so.13
        7f0000400000-7f0000800000 r-xp 00400000 08:01 42   /venv/nvidia/cu13/lib/libcublasLt.so.13
        7f0000800000-7f0000900000 rw-p 00000000 00:00 0
        7f1000000000-7f1000100000 r--p 00000000 08:01 43   /venv/torch/lib/libtorch_cpu.so
        """
    )
    wanted = re.compile(r"libcublasLt")
    assert load_addresses(maps, wanted) == {"/venv/nvidia/cu13/lib/libcublasLt.so.13": 0x7F0000000000}


PROBE = textwrap.dedent(
    """
    import torch
    from modelyard.server.engine.host.library_bss import release_uncalled_library_bss
    a = torch.randn(64, 64)
    before = a @ a
    released = release_uncalled_library_bss()
    assert torch.equal(a @ a, before)
    assert torch.cuda.device_count() >= 0  # the CUDA runtime's own data is untouched
    print(released, flush=True)
    """
)


def test_torch_computes_and_the_process_exits_cleanly_after_the_bss_went() -> None:
    # A normal exit runs the libraries' static destructors over their zeroed data: they must end.
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=300
    )
    assert int(done.stdout.split()[-1]) >= 0  # 0 with a CPU-only torch build


@pytest.mark.model
async def test_an_engine_process_gives_transformers_greedy_tokens(model_dirs: dict[str, Path]) -> None:
    path = model_dirs["llama"]
    plain: Any = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    plain.eval()
    prompt = [5, 17, 30, 9]
    with torch.no_grad():
        expected = plain.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False, pad_token_id=0)
    client = await EngineClient.launch(
        EngineConfig(model=str(path), device="cpu", dtype="float32"), lambda *_: None, threads=1
    )
    try:
        greedy = SamplingParams(max_tokens=10, temperature=0.0)
        outs = [o async for o in client.generate(GenerationRequest("a", prompt, greedy))]
        tokens = [t for o in outs for t in o.token_ids]
        assert tokens == expected[0, len(prompt) :].tolist()
    finally:
        await client.stop()
