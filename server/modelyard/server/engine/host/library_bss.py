"""Hand back the zero-initialised data (``.bss``) that NVIDIA's math libraries write while loading, in an
engine process that runs on CPU.

PyPI's torch wheel links cuBLASLt through ``libtorch_cuda.so``, so ``import torch`` loads it on a machine
without a GPU too, and its static constructors fill ~87 MiB of its 90 MiB ``.bss``/``.lbss`` (the
zero-fill part of its writable segment, which the dynamic loader maps as anonymous memory). Those pages
are the process's own, not the file's, so ``resident_pages`` leaves them alone; they stay resident for
the process's life although a CPU engine never calls into cuBLASLt (torch does only for CUDA tensors).

``madvise(MADV_DONTNEED)`` on that range gives the pages back; a later read would see zeros, not the
constructed objects. That is sound only where nothing reads them again:
- only libraries torch enters to compute on CUDA tensors alone (``_UNCALLED_ON_CPU``): never the CUDA
  runtime (``torch.cuda.is_available()`` calls it on CPU too) nor torch's own CUDA libraries (their
  static registrations stay in use);
- of those, only the ones whose static destructors still end cleanly over zeroed data (cuBLASLt's and
  cuFFT's do; nvJitLink's spin and NVRTC's crash, so they are left alone), should a process exit
  normally: the engine process ends with ``os._exit``, which runs none;
- only in an engine process on CPU, once loading is done.
Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import mmap
import re
import struct
from pathlib import Path

from modelyard.server.engine.host import resident_pages

# NVIDIA's libraries (the wheel puts them under site-packages/nvidia/) that torch enters only to compute on
# CUDA tensors, and whose exit still ends cleanly without their .bss: ~88 MiB and ~4 MiB of it resident.
_UNCALLED_ON_CPU = re.compile(r"/nvidia/.*/lib(cublasLt|cufft)\.so[.0-9]*$")
_ELF64_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")  # e_ident .. e_shstrndx
# p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align
_PROGRAM_HEADER = struct.Struct("<IIQQQQQQ")
_PT_LOAD = 1
_PF_W = 2
_MAPS_LINE = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) \S{4} ([0-9a-f]+) \S+ \S+\s*(.*)$")


def zero_fill_segments(elf: Path) -> list[tuple[int, int]]:
    """The zero-fill parts ``[vaddr + filesz, vaddr + memsz)`` of a shared library's writable load
    segments, relative to its load address; [] if ``elf`` is no little-endian ELF64 library."""
    try:
        with elf.open("rb") as file:
            header = file.read(_ELF64_HEADER.size)
            if len(header) < _ELF64_HEADER.size or header[:5] != b"\x7fELF\x02" or header[5] != 1:
                return []
            fields = _ELF64_HEADER.unpack(header)
            phoff, phentsize, phnum = fields[5], fields[9], fields[10]
            file.seek(phoff)
            table = file.read(phentsize * phnum)
    except OSError:
        return []
    segments: list[tuple[int, int]] = []
    first_vaddr: int | None = None
    for index in range(phnum):
        entry = table[index * phentsize : index * phentsize + _PROGRAM_HEADER.size]
        if len(entry) < _PROGRAM_HEADER.size:
            return []
        p_type, p_flags, _, p_vaddr, _, p_filesz, p_memsz, _ = _PROGRAM_HEADER.unpack(entry)
        if p_type != _PT_LOAD:
            continue
        if first_vaddr is None:
            first_vaddr = p_vaddr
        if p_flags & _PF_W and p_memsz > p_filesz:
            segments.append((p_vaddr + p_filesz, p_vaddr + p_memsz))
    # A shared library's first segment sits at its load address; others (executables) are not ours.
    return segments if first_vaddr == 0 else []


def load_addresses(maps_text: str, wanted: re.Pattern[str]) -> dict[str, int]:
    """Where each library whose path ``wanted`` matches is loaded: its mapping at file offset 0."""
    bases: dict[str, int] = {}
    for line in maps_text.splitlines():
        match = _MAPS_LINE.match(line)
        if match is None or int(match[3], 16) != 0:
            continue
        path = match[4]
        if wanted.search(path) and path not in bases:
            bases[path] = int(match[1], 16)
    return bases


def _page_up(address: int) -> int:
    return -(-address // mmap.PAGESIZE) * mmap.PAGESIZE


def release_uncalled_library_bss(
    maps: Path = Path("/proc/self/maps"), smaps: Path = Path("/proc/self/smaps")
) -> int:
    """Drop the resident ``.bss`` pages of ``_UNCALLED_ON_CPU`` libraries; the bytes dropped. Call only in
    a process that runs no CUDA work and exits with ``os._exit`` (see the module's docstring)."""
    ranges: list[tuple[int, int]] = []
    with contextlib.suppress(OSError):
        for path, base in load_addresses(maps.read_text(), _UNCALLED_ON_CPU).items():
            # The page holding the end of the file's data is mapped from the file: only whole zero-fill
            # pages after it, which the loader maps as anonymous memory, are dropped.
            segments = zero_fill_segments(Path(path))
            ranges += [(_page_up(base + lo), _page_up(base + hi)) for lo, hi in segments]
    if not ranges:
        return 0
    try:
        anonymous = [m for m in resident_pages.parse_smaps(smaps.read_text()) if m.path == ""]
    except OSError:
        return 0
    dropped = 0
    for mapping in anonymous:
        for lo, hi in ranges:
            # Clipped to the range: the kernel may have merged the zero-fill mapping with a neighbour.
            start, end = max(lo, mapping.start), min(hi, mapping.end)
            if start < end and resident_pages.drop_range(start, end - start):
                dropped += min(end - start, mapping.rss_kib * 1024)
    return dropped
