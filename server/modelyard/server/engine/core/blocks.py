"""The KV block manager: fixed-size blocks with refcounts, and the prefix index that shares them.

Block ids index a pool of ``block_size``-token slots the model runner owns; this module never sees a
tensor, so it is tested on its own. Block 0 is reserved: padded attention columns read it, so it is
never handed out.

Prefix caching (vLLM/SGLang style): a *full* block holding tokens ``t[i*B:(i+1)*B]`` is named by a hash
chained over every token before it (``hash(parent_hash, tokens)``), so equal hashes mean equal
prefixes and therefore equal keys/values. A registered block that no request holds any more is not
freed but kept as *evictable*, in least-recently-released order, and reused by the next request whose
prefix hashes to it; it is only recycled (and forgotten by the index) when no never-cached free block
is left. Partial blocks are never cached: their contents still change.
"""

from __future__ import annotations

import collections
import hashlib
from array import array
from collections.abc import Iterable, Sequence

BlockHash = bytes
RESERVED_BLOCK = 0


def hash_block(parent: BlockHash | None, tokens: Sequence[int]) -> BlockHash:
    """The chained name of a full block: a 128-bit digest of the parent's name and this block's ids."""
    digest = hashlib.blake2b(digest_size=16)
    if parent is not None:
        digest.update(parent)
    digest.update(array("q", tokens).tobytes())
    return digest.digest()


def extend_hashes(
    hashes: list[BlockHash], tokens: Sequence[int], block_size: int, salt: BlockHash | None = None
) -> None:
    """Append the names of the full blocks of ``tokens`` that ``hashes`` does not cover yet. ``salt``
    (e.g. a LoRA adapter's) stands in as the first block's parent, so equal tokens under another salt
    name other blocks."""
    for index in range(len(hashes), len(tokens) // block_size):
        parent = hashes[-1] if hashes else salt
        hashes.append(hash_block(parent, tokens[index * block_size : (index + 1) * block_size]))


class BlockManager:
    """Hands out KV blocks, counts references, and indexes full blocks by prefix hash."""

    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = True) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("the KV pool needs at least one block of at least one token")
        self.num_blocks = num_blocks  # usable blocks, the reserved one excluded
        self.block_size = block_size
        self.enable_caching = enable_caching
        # Never-cached free blocks, most recently freed last (reused first: its memory is warm).
        self._free: list[int] = list(range(num_blocks, 0, -1))
        self._refs = [0] * (num_blocks + 1)
        self._hash_of: dict[int, BlockHash] = {}
        self._by_hash: dict[BlockHash, int] = {}
        # Registered blocks nobody holds, least recently released first: the eviction order.
        self._evictable: collections.OrderedDict[int, None] = collections.OrderedDict()
        # Blocks handed out since the last take_fresh(): their unwritten tail slots still hold old
        # values, which a runner gathering whole blocks must clear (0 x NaN is NaN even when masked).
        self._fresh: list[int] = []

    # ----- accounting -----

    @property
    def num_free(self) -> int:
        """Blocks an allocation may take: never-cached free ones plus evictable cached ones."""
        return len(self._free) + len(self._evictable)

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    @property
    def num_cached(self) -> int:
        return len(self._by_hash)

    def usage(self) -> float:
        return self.num_used / self.num_blocks

    def refcount(self, block: int) -> int:
        return self._refs[block]

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # ----- the prefix index -----

    def lookup(self, hashes: Iterable[BlockHash]) -> list[int]:
        """The cached blocks of the longest prefix of ``hashes`` (no reference taken)."""
        found: list[int] = []
        if not self.enable_caching:
            return found
        for name in hashes:
            block = self._by_hash.get(name)
            if block is None:
                break
            found.append(block)
        return found

    def register(self, block: int, name: BlockHash) -> None:
        """Record that ``block`` (full, held by the caller) holds the prefix named ``name``.

        A prefix already indexed under another block keeps that block: the caller's copy stays private
        and is plainly freed when released.
        """
        if not self.enable_caching or name in self._by_hash or block in self._hash_of:
            return
        self._by_hash[name] = block
        self._hash_of[block] = name

    # ----- references -----

    def acquire(self, blocks: Iterable[int]) -> None:
        """Take a reference on blocks found by ``lookup`` (an evictable one stops being evictable)."""
        for block in blocks:
            if self._refs[block] == 0:
                self._evictable.pop(block, None)
            self._refs[block] += 1

    def allocate(self, count: int) -> list[int] | None:
        """``count`` fresh blocks (reference 1), or None, taking nothing, if they are not there."""
        if count > self.num_free:
            return None
        taken: list[int] = []
        for _ in range(count):
            if self._free:
                block = self._free.pop()
            else:
                block, _ = self._evictable.popitem(last=False)
                del self._by_hash[self._hash_of.pop(block)]
            self._refs[block] = 1
            taken.append(block)
        self._fresh.extend(taken)
        return taken

    def take_fresh(self) -> list[int]:
        fresh, self._fresh = self._fresh, []
        return fresh

    def release(self, blocks: Sequence[int]) -> None:
        """Drop one reference on each block; tail blocks first, so they are the first evicted."""
        for block in reversed(blocks):
            refs = self._refs[block] - 1
            if refs < 0:
                raise RuntimeError(f"block {block} released more often than acquired")
            self._refs[block] = refs
            if refs:
                continue
            if block in self._hash_of:
                self._evictable[block] = None
            else:
                self._free.append(block)

    def reset_cache(self) -> None:
        """Forget every cached prefix (evictable blocks become plain free blocks)."""
        for block in self._evictable:
            self._free.append(block)
        self._evictable.clear()
        for block in list(self._hash_of):
            if self._refs[block] == 0:
                del self._by_hash[self._hash_of.pop(block)]
