"""Per-request block tables on top of the block pool, with prefix caching and swap.

The scheduler asks before it acts: ``can_allocate`` / ``allocate``, ``can_swap_out`` /
``swap_out``, ``can_swap_in`` / ``swap_in``. Block tables handed to the runner are plain
lists of block ids owned here; the runner never mutates them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from fleetserve.engine.core.block_pool import Block, BlockPool, HostBlockPool, hash_block
from fleetserve.engine.core.request import Request


@dataclass
class PrefixHit:
    """Cached blocks found for a waiting request's leading tokens (opaque to the scheduler)."""

    blocks: list[Block]
    num_tokens: int


NO_HIT = PrefixHit([], 0)


@dataclass
class KVSlotUsage:
    used_blocks: int
    filled_slots: int       # token slots that hold K/V
    used_block_slots: int   # slots in blocks currently in use
    total_slots: int        # slots in the whole pool

    @property
    def unused_fraction(self) -> float:
        """Share of the in-use blocks' slots that hold nothing (paged KV's waste)."""
        return 1 - self.filled_slots / self.used_block_slots if self.used_block_slots else 0.0


class KVCacheManager:
    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        *,
        enable_prefix_caching: bool = True,
        num_host_blocks: int = 0,
    ):
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.pool = BlockPool(num_blocks)
        self.host_pool = HostBlockPool(num_host_blocks)
        self._blocks: dict[str, list[Block]] = {}
        self._tables: dict[str, list[int]] = {}
        self._num_hashed: dict[str, int] = {}  # leading blocks of a request already indexed
        self._host_tables: dict[str, list[int]] = {}
        self.prefix_queries = 0  # prompt tokens looked up at first admission
        self.prefix_hits = 0     # of which found in the cache

    # ---------------------------------------------------------------- sizes and queries
    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free

    @property
    def num_used_blocks(self) -> int:
        return self.pool.num_blocks - self.pool.num_free

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def block_table(self, request_id: str) -> list[int]:
        return self._tables[request_id]

    def num_blocks_of(self, request_id: str) -> int:
        return len(self._tables.get(request_id, ()))

    # ---------------------------------------------------------------- prefix cache
    def _extend_hashes(self, request: Request, num_full: int) -> None:
        hashes = request.block_hashes
        tokens = request.all_token_ids
        bs = self.block_size
        while len(hashes) < num_full:
            i = len(hashes)
            parent = hashes[-1] if hashes else None
            hashes.append(hash_block(parent, request.salt, tokens[i * bs:(i + 1) * bs], request.lora_key))

    def find_prefix(self, request: Request) -> PrefixHit:
        """Longest run of cached full blocks matching the request's leading tokens.

        At least one token is always left to compute: the step needs the last token's
        logits to sample the next one.
        """
        if not self.enable_prefix_caching:
            return NO_HIT
        max_blocks = (request.num_tokens - 1) // self.block_size
        self._extend_hashes(request, max_blocks)
        blocks = []
        for block_hash in request.block_hashes[:max_blocks]:
            block = self.pool.get_cached(block_hash)
            if block is None:
                break
            blocks.append(block)
        return PrefixHit(blocks, len(blocks) * self.block_size) if blocks else NO_HIT

    def record_prefix_lookup(self, request: Request, hit: PrefixHit) -> None:
        self.prefix_queries += request.num_prompt_tokens
        self.prefix_hits += min(hit.num_tokens, request.num_prompt_tokens)

    def cache_full_blocks(self, request: Request) -> None:
        """Index the request's blocks that became full and computed in the last step."""
        if not self.enable_prefix_caching:
            return
        rid = request.request_id
        num_full = request.num_computed_tokens // self.block_size
        done = self._num_hashed.get(rid, 0)
        if num_full <= done:
            return
        self._extend_hashes(request, num_full)
        blocks = self._blocks[rid]
        for i in range(done, num_full):
            self.pool.cache(blocks[i], request.block_hashes[i])
        self._num_hashed[rid] = num_full

    def reset_prefix_cache(self) -> bool:
        return self.pool.reset_prefix_cache()

    # ---------------------------------------------------------------- allocation
    def _num_new_blocks(self, request: Request, num_new_tokens: int, hit: PrefixHit) -> int:
        have = len(self._blocks.get(request.request_id, ())) + len(hit.blocks)
        total_tokens = request.num_computed_tokens + hit.num_tokens + num_new_tokens
        return max(0, self.blocks_for(total_tokens) - have)

    def can_allocate(
        self, request: Request, num_new_tokens: int, hit: PrefixHit = NO_HIT, *, reserve: int = 0
    ) -> bool:
        """Whether room for ``num_new_tokens`` more tokens (after ``hit``) fits, keeping
        ``reserve`` blocks free for requests already running."""
        # Reviving an idle cached block takes it off the free list too.
        revived = sum(1 for b in hit.blocks if b.ref_cnt == 0)
        need = self._num_new_blocks(request, num_new_tokens, hit) + revived
        return need + reserve <= self.pool.num_free

    def allocate(self, request: Request, num_new_tokens: int, hit: PrefixHit = NO_HIT) -> None:
        """Extend the request's table to hold ``num_new_tokens`` more tokens.

        With a prefix ``hit`` (only on an empty table) the cached blocks are shared and the
        request's ``num_computed_tokens`` advances past them.
        """
        rid = request.request_id
        blocks = self._blocks.setdefault(rid, [])
        table = self._tables.setdefault(rid, [])
        if hit.blocks:
            if blocks:
                raise RuntimeError("a prefix hit applies to an empty block table only")
            self.pool.touch(hit.blocks)
            blocks.extend(hit.blocks)
            table.extend(b.block_id for b in hit.blocks)
            request.num_computed_tokens += hit.num_tokens
            self._num_hashed[rid] = len(hit.blocks)
        n = self._num_new_blocks(request, num_new_tokens, NO_HIT)
        if n:
            new = self.pool.take_new(n)
            blocks.extend(new)
            table.extend(b.block_id for b in new)

    def free(self, request: Request) -> None:
        """Release the request's device blocks (tail first, so shared prefixes live longest)
        and its host blocks."""
        rid = request.request_id
        blocks = self._blocks.pop(rid, None)
        if blocks:
            self.pool.release(reversed(blocks))
        self._tables.pop(rid, None)
        self._num_hashed.pop(rid, None)
        host = self._host_tables.pop(rid, None)
        if host:
            self.host_pool.release(host)

    # ---------------------------------------------------------------- swap
    def can_swap_out(self, request: Request) -> bool:
        return len(self._blocks.get(request.request_id, ())) <= self.host_pool.num_free

    def swap_out(self, request: Request) -> list[tuple[int, int]]:
        """Move the request's blocks to host blocks; returns (device, host) copies to run
        before the device blocks are reused."""
        rid = request.request_id
        table = self._tables[rid]
        host = self.host_pool.take(len(table))
        mapping = list(zip(table, host))
        blocks = self._blocks.pop(rid)
        self.pool.release(reversed(blocks))
        del self._tables[rid]
        self._num_hashed.pop(rid, None)
        self._host_tables[rid] = host
        return mapping

    def num_swapped_blocks(self, request: Request) -> int:
        return len(self._host_tables.get(request.request_id, ()))

    def can_swap_in(self, request: Request, num_new_tokens: int, *, reserve: int = 0) -> bool:
        """Whether the swapped blocks plus room for ``num_new_tokens`` more fit."""
        total = request.num_computed_tokens + num_new_tokens
        need = max(self.num_swapped_blocks(request), self.blocks_for(total))
        return need + reserve <= self.pool.num_free

    def swap_in(self, request: Request) -> list[tuple[int, int]]:
        """Fresh device blocks for a swapped request; returns (host, device) copies."""
        rid = request.request_id
        host = self._host_tables.pop(rid)
        blocks = self.pool.take_new(len(host))
        self._blocks[rid] = blocks
        self._tables[rid] = [b.block_id for b in blocks]
        self._num_hashed[rid] = 0
        self.host_pool.release(host)
        return list(zip(host, self._tables[rid]))

    def slot_usage(self, requests: Sequence[Request]) -> "KVSlotUsage":
        """Token slots holding K/V versus slots in blocks in use (internal fragmentation).

        Only a request's last block can be partly filled (shared prefix blocks are full), so
        the unused slots are each running request's table capacity minus its computed tokens.
        """
        used_blocks = self.num_used_blocks
        unused = 0
        for r in requests:
            table = self._tables.get(r.request_id)
            if table:
                unused += max(0, len(table) * self.block_size - r.num_computed_tokens)
        used_slots = used_blocks * self.block_size
        return KVSlotUsage(used_blocks, used_slots - unused, used_slots, self.num_blocks * self.block_size)

    # ---------------------------------------------------------------- checks
    def check_invariants(self, live_request_ids: Optional[Sequence[str]] = None) -> None:
        """Raise AssertionError when the pool's bookkeeping is inconsistent (tests)."""
        refs = [0] * self.pool.num_blocks
        for rid, blocks in self._blocks.items():
            assert [b.block_id for b in blocks] == self._tables[rid], f"table of {rid} out of sync"
            assert len({b.block_id for b in blocks}) == len(blocks), f"{rid} holds a block twice"
            for b in blocks:
                refs[b.block_id] += 1
        free_ids = [b.block_id for b in self.pool.free_queue]
        assert len(free_ids) == len(set(free_ids)) == self.pool.num_free, "free list corrupt"
        free_set = set(free_ids)
        for b in self.pool.blocks:
            assert b.ref_cnt == refs[b.block_id], f"{b} ref count != {refs[b.block_id]} holders"
            assert (b.ref_cnt == 0) == (b.block_id in free_set), f"{b} free-list membership wrong"
        for h, b in self.pool.cached.items():
            assert b.block_hash == h, f"{b} indexed under a stale hash"
        host_ids = [i for t in self._host_tables.values() for i in t]
        assert len(host_ids) == len(set(host_ids)), "host block held twice"
        assert len(host_ids) + self.host_pool.num_free == self.host_pool.num_blocks, "host block leaked"
        if live_request_ids is not None:
            held = set(self._blocks) | set(self._host_tables)
            assert held <= set(live_request_ids), f"blocks held by dead requests {held - set(live_request_ids)}"
