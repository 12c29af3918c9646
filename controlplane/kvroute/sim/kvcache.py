"""Paged KV cache with prefix caching, after vLLM V1's BlockPool and KVCacheManager.

Blocks hold `block_size` tokens. A full block is identified by a hash chained on its parent's
hash and its token ids, so equal hashes mean equal prefixes. Blocks no running request uses
stay cached in a free queue ordered least recently used first; allocating a block takes the
queue's head and forgets whatever it cached. A request's blocks are freed tail first, so the
end of a prompt is evicted before its (more widely shared) beginning, as in vLLM.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterable

from .kv_events import all_blocks_cleared, block_removed, block_stored, external_hash


class Block:
    __slots__ = ("id", "ref", "hash")

    def __init__(self, block_id: int) -> None:
        self.id = block_id
        self.ref = 0
        self.hash: int | None = None


def chain_hashes(parent: int | None, tokens: list[int], block_size: int, start_block: int, out: list[int]) -> None:
    """Append the hashes of full blocks from `start_block` on to `out` (tuple hashing of ints is
    deterministic across processes, unlike str hashing)."""
    n_full = len(tokens) // block_size
    h = parent if parent is not None else (out[-1] if out else 0x5EED)
    for b in range(start_block, n_full):
        h = hash((h, tuple(tokens[b * block_size : (b + 1) * block_size])))
        out.append(h)


class KVCache:
    def __init__(self, num_gpu_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_gpu_blocks < 2:
            raise ValueError("num_gpu_blocks must be at least 2")
        self.block_size = block_size
        self.num_gpu_blocks = num_gpu_blocks
        self.enable_prefix_caching = enable_prefix_caching
        # The free queue is the never-used blocks (ids `_fresh`..num_gpu_blocks-1, created on first
        # use: a profile has tens of thousands) followed by `free`, freed blocks in LRU order.
        # Block 0 is vLLM's null block: never allocated, so capacity is num_gpu_blocks - 1.
        self._fresh = 1
        self.free: OrderedDict[int, Block] = OrderedDict()
        self.cached: dict[int, Block] = {}
        self.evictions = 0
        # KV events since the last step, in vLLM's shape (sim/kv_events.py); None: not published.
        self.events: list[dict[str, Any]] | None = None

    @property
    def usable_blocks(self) -> int:
        return self.num_gpu_blocks - 1

    @property
    def num_free(self) -> int:
        return len(self.free) + self.num_gpu_blocks - self._fresh

    def usage(self) -> float:
        # Like vLLM: cached blocks nobody references count as free.
        return 1.0 - self.num_free / self.usable_blocks

    def lookup(self, hashes: Iterable[int]) -> list[Block]:
        """The longest run of cached blocks matching `hashes` from the start."""
        hits: list[Block] = []
        if not self.enable_prefix_caching:
            return hits
        cached = self.cached
        for h in hashes:
            b = cached.get(h)
            if b is None:
                break
            hits.append(b)
        return hits

    def allocate(self, owned: list[Block], hits: list[Block], num_tokens: int) -> bool:
        """Grow `owned` (a request's block table) so it covers `num_tokens` tokens, first with the
        cache `hits` (only when `owned` is empty) then with fresh blocks. All or nothing."""
        need = -(-num_tokens // self.block_size) - len(owned) - len(hits)
        # Hits sitting unreferenced in the free queue stop being allocatable once touched.
        touched_free = sum(1 for b in hits if b.ref == 0)
        if need > self.num_free - touched_free:
            return False
        free = self.free
        for b in hits:
            if b.ref == 0:
                del free[b.id]
            b.ref += 1
        owned.extend(hits)
        for _ in range(max(0, need)):
            if self._fresh < self.num_gpu_blocks:
                owned.append(Block(self._fresh))
                owned[-1].ref = 1
                self._fresh += 1
                continue
            _, b = free.popitem(last=False)
            if b.hash is not None:
                if self.cached.get(b.hash) is b:
                    del self.cached[b.hash]
                    self.evictions += 1
                    if self.events is not None:
                        self.events.append(block_removed([external_hash(b.hash)]))
                b.hash = None
            b.ref = 1
            owned.append(b)
        return True

    def cache_blocks(self, owned: list[Block], hashes: list[int], start: int, end: int,
                     tokens: list[int] | None = None) -> None:
        """Register blocks [start, end) of a request as cached under their hashes. A hash already
        cached by another block keeps the older one (vLLM keeps both; lookups hit the same).
        With events on, each run of newly cached blocks is one BlockStored (`tokens`: the
        request's token ids), so the published set is exactly `cached`."""
        if not self.enable_prefix_caching:
            return
        cached = self.cached
        events = self.events
        run = -1
        for i in range(start, end):
            h = hashes[i]
            b = owned[i]
            if b.hash is None and h not in cached:
                b.hash = h
                cached[h] = b
                if run < 0:
                    run = i
            elif run >= 0 and events is not None:
                self._stored(events, hashes, run, i, tokens)
                run = -1
        if run >= 0 and events is not None:
            self._stored(events, hashes, run, end, tokens)

    def _stored(self, events: list[dict[str, Any]], hashes: list[int], start: int, end: int,
                tokens: list[int] | None) -> None:
        bs = self.block_size
        parent = external_hash(hashes[start - 1]) if start > 0 else None
        token_ids = tokens[start * bs : end * bs] if tokens is not None else []
        events.append(block_stored([external_hash(h) for h in hashes[start:end]], parent, token_ids, bs))

    def reset_prefix_cache(self) -> bool:
        """vLLM's reset_prefix_cache: forget every cached hash, refused while any block is in use."""
        if self.num_free < self.usable_blocks:
            return False
        for b in self.cached.values():
            b.hash = None
        self.cached.clear()
        if self.events is not None:
            self.events.append(all_blocks_cleared())
        return True

    def release(self, owned: list[Block]) -> None:
        free = self.free
        for b in reversed(owned):
            b.ref -= 1
            if b.ref == 0:
                free[b.id] = b
        owned.clear()

    def reset(self) -> None:
        events = self.events
        self.__init__(self.num_gpu_blocks, self.block_size, self.enable_prefix_caching)  # type: ignore[misc]
        # A restarted process has a new publisher; events not yet sent die with the old one.
        self.events = None if events is None else []
