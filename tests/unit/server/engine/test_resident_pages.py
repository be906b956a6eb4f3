"""Resident pages the engine process hands back (``host/resident_pages.py``): a file mapping's unmodified
pages leave the resident set and read back the same; written mappings and other files' are left alone;
on CPU, torch still computes after the CUDA libraries' pages went."""

from __future__ import annotations

import ctypes
import mmap
import subprocess
import sys
import textwrap
from pathlib import Path

from modelyard.server.engine.host.resident_pages import parse_smaps, release_file_mapping

PAGE = mmap.PAGESIZE


def _mapping_rss_kib(address: int) -> int:
    mappings = parse_smaps(Path("/proc/self/smaps").read_text())
    return next(m.rss_kib for m in mappings if m.start <= address < m.end)


def _address(view: mmap.mmap) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


def test_a_read_file_mapping_leaves_the_resident_set_and_reads_back_the_same(tmp_path: Path) -> None:
    data = bytes(range(256)) * (64 * PAGE // 256)
    path = tmp_path / "weights.bin"
    path.write_bytes(data)
    with path.open("r+b") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY) as view:
        assert sum(view[i] for i in range(0, len(data), PAGE)) >= 0  # touch every page
        address = _address(view)
        assert _mapping_rss_kib(address) >= 64 * PAGE // 1024
        assert release_file_mapping(address) >= 64 * PAGE
        assert _mapping_rss_kib(address) == 0
        assert view[:] == data


def test_a_mapping_with_private_writes_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\1" * 8 * PAGE)
    with path.open("r+b") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY) as view:
        view[0] = 7  # a private copy now: dropping it would lose the write
        address = _address(view)
        assert release_file_mapping(address) == 0
        assert view[0] == 7


def test_parse_smaps_reads_ranges_permissions_and_sizes() -> None:
    text = textwrap.dedent(
        """\
        7f00a0000000-7f00a0400000 r-xp 00000000 08:01 42   /venv/nvidia/cu13/lib/libcublasLt.so.13
        Size:               4096 kB
        Rss:                2048 kB
        Anonymous:             0 kB
        7f00a0400000-7f00a0401000 rw-p 00000000 00:00 0
        Rss:                   4 kB
        Anonymous:             4 kB
        """
    )
    lib, anon = parse_smaps(text)
    assert (lib.start, lib.end, lib.perms, lib.rss_kib) == (0x7F00A0000000, 0x7F00A0400000, "r-xp", 2048)
    assert lib.unmodified
    assert lib.cuda_library
    assert not anon.unmodified
    assert anon.path == ""


PROBE = textwrap.dedent(
    """
    import torch
    from modelyard.server.engine.host.resident_pages import release_cuda_library_pages
    a = torch.randn(64, 64)
    before = a @ a
    released = release_cuda_library_pages()
    assert torch.equal(a @ a, before)
    print(released)
    """
)


def test_torch_computes_on_cpu_after_the_cuda_libraries_pages_went() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=300
    )
    assert int(done.stdout.split()[-1]) >= 0  # 0 with a CPU-only torch build
