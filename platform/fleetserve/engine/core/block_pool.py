"""The device KV block pool: ref-counted blocks, a prefix-cache index and an LRU free list.

A block whose ref count drops to zero goes to the tail of the free list but keeps its hash,
so a later request with the same prefix (and the same salt) can take it back. New blocks
come from the head of the free list, which is the least recently freed one; only then is its
hash evicted from the index. Every operation is O(1) per block.
"""

from __future__ import annotations

import hashlib
from array import array
from typing import Iterable, Optional, Sequence


class Block:
    """One block of ``block_size`` token slots in every layer's K/V tensors."""

    __slots__ = ("block_id", "ref_cnt", "block_hash", "prev_free", "next_free")

    def __init__(self, block_id: int):
        self.block_id = block_id
        self.ref_cnt = 0
        self.block_hash: Optional[bytes] = None
        self.prev_free: Optional[Block] = None
        self.next_free: Optional[Block] = None

    def __repr__(self) -> str:
        return f"Block({self.block_id}, ref={self.ref_cnt}, hashed={self.block_hash is not None})"


def hash_block(parent: Optional[bytes], salt: Optional[str], token_ids: Sequence[int],
               lora_key: Optional[str] = None) -> bytes:
    """Chained, salted hash of one full block.

    The parent's hash makes a block's identity depend on the whole prefix; the salt keeps
    tenants apart (two tenants with the same prompt get different hashes). A cryptographic
    digest rather than Python's ``hash`` so that a collision cannot hand one tenant another
    tenant's K/V. ``lora_key`` (the adapter's name@revision) keeps adapters apart the same way.
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(parent or b"\0" * 16)
    if salt is None:
        h.update(b"\0")
    else:
        encoded = salt.encode()
        h.update(b"\1" + len(encoded).to_bytes(4, "little") + encoded)
    if lora_key is not None:
        encoded = lora_key.encode()
        h.update(b"\2" + len(encoded).to_bytes(4, "little") + encoded)
    h.update(array("q", token_ids).tobytes())
    return h.digest()


class FreeBlockQueue:
    """Doubly linked list of free blocks in eviction order (head is evicted first)."""

    def __init__(self, blocks: Iterable[Block]):
        self._head = Block(-1)  # sentinels keep the link updates branch-free
        self._tail = Block(-2)
        self._head.next_free = self._tail
        self._tail.prev_free = self._head
        self.num_free = 0
        for block in blocks:
            self.append(block)

    def append(self, block: Block) -> None:
        last = self._tail.prev_free
        last.next_free = block
        block.prev_free = last
        block.next_free = self._tail
        self._tail.prev_free = block
        self.num_free += 1

    def remove(self, block: Block) -> None:
        block.prev_free.next_free = block.next_free
        block.next_free.prev_free = block.prev_free
        block.prev_free = block.next_free = None
        self.num_free -= 1

    def popleft(self) -> Block:
        block = self._head.next_free
        if block is self._tail:
            raise RuntimeError("no free KV blocks (the caller must check can_allocate first)")
        self.remove(block)
        return block

    def __iter__(self):
        block = self._head.next_free
        while block is not self._tail:
            yield block
            block = block.next_free


class BlockPool:
    """Owns every device block; the KV cache manager is its only user."""

    def __init__(self, num_blocks: int):
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_queue = FreeBlockQueue(self.blocks)
        self.cached: dict[bytes, Block] = {}

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free(self) -> int:
        return self.free_queue.num_free

    def get_cached(self, block_hash: bytes) -> Optional[Block]:
        return self.cached.get(block_hash)

    def take_new(self, n: int) -> list[Block]:
        """Pop ``n`` blocks off the LRU head, evicting their old hashes."""
        out = []
        for _ in range(n):
            block = self.free_queue.popleft()
            if block.block_hash is not None:
                if self.cached.get(block.block_hash) is block:
                    del self.cached[block.block_hash]
                block.block_hash = None
            block.ref_cnt = 1
            out.append(block)
        return out

    def touch(self, blocks: Iterable[Block]) -> None:
        """Take a reference on cached blocks (reviving them from the free list if idle)."""
        for block in blocks:
            if block.ref_cnt == 0:
                self.free_queue.remove(block)
            block.ref_cnt += 1

    def release(self, blocks: Iterable[Block]) -> None:
        """Drop one reference each; pass blocks in the order they should be evicted."""
        for block in blocks:
            if block.ref_cnt <= 0:
                raise RuntimeError(f"{block} freed twice")
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                self.free_queue.append(block)

    def cache(self, block: Block, block_hash: bytes) -> None:
        """Index a full, computed block by its hash (first writer wins on duplicates)."""
        if block.block_hash is None and block_hash not in self.cached:
            block.block_hash = block_hash
            self.cached[block_hash] = block

    def reset_prefix_cache(self) -> bool:
        """Forget every hash (after the K/V memory was released). Only when all are free."""
        if self.num_free != self.num_blocks:
            return False
        for block in self.blocks:
            block.block_hash = None
        self.cached.clear()
        return True


class HostBlockPool:
    """Host-memory blocks for swap preemption; plain ids, no caching."""

    def __init__(self, num_blocks: int):
        self.num_blocks = num_blocks
        self._free = list(range(num_blocks - 1, -1, -1))

    @property
    def num_free(self) -> int:
        return len(self._free)

    def take(self, n: int) -> list[int]:
        if n > len(self._free):
            raise RuntimeError("host swap pool exhausted (the caller must check first)")
        return [self._free.pop() for _ in range(n)]

    def release(self, block_ids: Iterable[int]) -> None:
        self._free.extend(block_ids)
