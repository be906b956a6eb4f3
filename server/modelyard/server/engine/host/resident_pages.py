"""Hand back resident pages that are copies of a file and that the engine no longer reads: the CUDA
libraries' in an engine process that runs on CPU, and the checkpoint's mapping behind an embedding.

PyPI's torch wheel links ``libtorch_cuda.so`` and, through it, cuBLASLt, NVRTC, nvJitLink, cuFFT and the
rest, so ``import torch`` loads them even on a machine without a GPU. Their static constructors (one per
compiled unit, spread across each library's code) touch pages all over those libraries while loading:
about 140 MiB of them stay resident in each engine process (measured in ``docs/server.md``, *Memory of the
engine processes*), though a CPU engine never runs that code again.

Pages of a read-only mapping that holds no private copy are the file's own pages, so dropping them from
this process (``madvise(MADV_DONTNEED)``) loses nothing: a later access reads them back from the page
cache, as after any reclaim. Mappings that were written to (relocations, data) are left alone.

The same holds for the checkpoint mapping that a tied input embedding stays a view of when the output
projection runs over its own packed copy (``loader.py``): loading read every page of the file through
it; afterwards the embedding looks up one row per token, so only those pages need to be resident.
Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import ctypes
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MADV_DONTNEED = 4  # linux/mman.h

# Libraries a CPU engine never executes: NVIDIA's own (the wheel puts them under site-packages/nvidia/) and
# torch's CUDA halves.
_CUDA_LIBRARY = re.compile(
    r"/nvidia/|/lib(torch_cuda|torch_cuda_linalg|c10_cuda|torch_nvshmem|caffe2_nvrtc)\.so|"
    r"/lib(cublas|cublasLt|cudnn|cufft|curand|cusolver|cusparse|nccl|nvrtc|nvJitLink|cupti)[^/]*\.so"
)
_HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ \S+\s*(.*)$")


@dataclass(frozen=True, slots=True)
class Mapping:
    start: int
    end: int
    perms: str
    path: str
    rss_kib: int
    anonymous_kib: int

    @property
    def unmodified(self) -> bool:
        """Mapped from a file, with no private page: what is resident is the file's own pages."""
        return self.anonymous_kib == 0 and self.rss_kib > 0 and self.path.startswith("/")

    @property
    def cuda_library(self) -> bool:
        return "w" not in self.perms and _CUDA_LIBRARY.search(self.path) is not None


def parse_smaps(text: str) -> list[Mapping]:
    mappings: list[Mapping] = []
    header: re.Match[str] | None = None
    fields: dict[str, int] = {}

    def close() -> None:
        if header is not None:
            mappings.append(
                Mapping(
                    start=int(header[1], 16),
                    end=int(header[2], 16),
                    perms=header[3],
                    path=header[4],
                    rss_kib=fields.get("Rss", 0),
                    anonymous_kib=fields.get("Anonymous", 0),
                )
            )

    for line in text.splitlines():
        match = _HEADER.match(line)
        if match is not None:
            close()
            header, fields = match, {}
            continue
        key, _, value = line.partition(":")
        if key in ("Rss", "Anonymous"):
            with contextlib.suppress(ValueError, IndexError):
                fields[key] = int(value.split()[0])
    close()
    return mappings


def release_cuda_library_pages(smaps: Path = Path("/proc/self/smaps")) -> int:
    """Drop this process's resident pages of the CUDA libraries' read-only, unmodified mappings; the bytes
    dropped (0 where ``/proc`` or ``madvise`` is missing). Call only where no CUDA device is in use."""
    return _release(lambda m: m.unmodified and m.cuda_library, smaps)


def release_file_mapping(address: int, smaps: Path = Path("/proc/self/smaps")) -> int:
    """Drop the resident pages of the unmodified file mapping that holds ``address``; the bytes dropped."""
    return _release(lambda m: m.unmodified and m.start <= address < m.end, smaps)


def _release(wanted: Callable[[Mapping], bool], smaps: Path) -> int:
    try:
        mappings = [m for m in parse_smaps(smaps.read_text()) if wanted(m)]
    except OSError:
        return 0
    return sum(m.rss_kib * 1024 for m in mappings if drop_range(m.start, m.end - m.start))


def drop_range(start: int, length: int) -> bool:
    """``madvise(start, length, MADV_DONTNEED)``; False where it failed or is missing."""
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return False
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    madvise.restype = ctypes.c_int
    return bool(madvise(start, length, MADV_DONTNEED) == 0)
