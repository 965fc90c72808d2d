"""KV cache manager: allocation, prefix caching by chained salted hashes, LRU reuse, swap."""

from fleetserve.engine.core.block_pool import hash_block
from tests.engine.factories import make_kv, make_request


def _admit(kv, request):
    hit = kv.find_prefix(request)
    n = request.num_tokens - hit.num_tokens
    assert kv.can_allocate(request, n, hit)
    kv.allocate(request, n, hit)
    request.num_computed_tokens = request.num_tokens  # as if the step ran
    kv.cache_full_blocks(request)
    return hit


def test_allocate_rounds_up_to_blocks_and_free_returns_all():
    kv = make_kv(num_blocks=8, block_size=4)
    r = make_request(list(range(9)))
    assert kv.can_allocate(r, 9)
    kv.allocate(r, 9)
    assert kv.num_blocks_of(r.request_id) == 3
    assert kv.num_free_blocks == 5
    kv.check_invariants([r.request_id])
    kv.free(r)
    assert kv.num_free_blocks == 8
    kv.check_invariants([])


def test_can_allocate_refuses_beyond_pool_and_respects_reserve():
    kv = make_kv(num_blocks=4, block_size=4)
    r = make_request(list(range(17)))
    assert not kv.can_allocate(r, 17)
    assert kv.can_allocate(r, 16)
    assert not kv.can_allocate(r, 16, reserve=1)


def test_prefix_hit_shares_full_blocks_and_leaves_one_token_to_compute():
    kv = make_kv(num_blocks=16, block_size=4)
    a = make_request(list(range(8)))
    _admit(kv, a)
    b = make_request(list(range(8)))  # identical prompt: only 1 block may hit (last token recomputed)
    hit = _admit(kv, b)
    assert hit.num_tokens == 4
    assert kv.block_table(b.request_id)[0] == kv.block_table(a.request_id)[0]
    assert kv.pool.blocks[kv.block_table(a.request_id)[0]].ref_cnt == 2
    c = make_request(list(range(8)) + [99, 98])
    assert _admit(kv, c).num_tokens == 8
    kv.check_invariants([a.request_id, b.request_id, c.request_id])
    for r in (a, b, c):
        kv.free(r)
    assert kv.num_free_blocks == 16
    kv.check_invariants([])


def test_hash_is_chained_on_the_parent():
    first = hash_block(None, None, [1, 2, 3, 4])
    assert hash_block(first, None, [5, 6, 7, 8]) != hash_block(hash_block(None, None, [0, 2, 3, 4]), None, [5, 6, 7, 8])
    # A block's hash depends on its prefix: same tokens after a different prefix miss.
    kv = make_kv(block_size=4)
    a = make_request([1, 2, 3, 4, 5, 6, 7, 8, 9])
    _admit(kv, a)
    b = make_request([0, 2, 3, 4, 5, 6, 7, 8, 9])
    assert kv.find_prefix(b).num_tokens == 0
    kv.free(a)


def test_tenant_salt_isolates_blocks_but_shared_salt_shares():
    kv = make_kv(block_size=4)
    prompt = list(range(12))
    a = make_request(prompt, salt="tenant-a")
    _admit(kv, a)
    assert kv.find_prefix(make_request(prompt, salt="tenant-b")).num_tokens == 0
    assert kv.find_prefix(make_request(prompt, salt=None)).num_tokens == 0
    assert kv.find_prefix(make_request(prompt, salt="tenant-a")).num_tokens == 8
    pub = make_request(prompt, salt="public")
    _admit(kv, pub)
    assert kv.find_prefix(make_request(prompt, salt="public")).num_tokens == 8
    kv.free(a)
    kv.free(pub)
    kv.check_invariants([])


def test_freed_cached_blocks_are_reused_by_hash_until_evicted_lru():
    kv = make_kv(num_blocks=6, block_size=4)
    a = make_request(list(range(9)))          # 3 blocks, 2 full + hashed
    _admit(kv, a)
    kv.free(a)
    assert kv.num_free_blocks == 6            # free, but still indexed
    again = make_request(list(range(9)))
    assert kv.find_prefix(again).num_tokens == 8
    # Filling the pool evicts least recently freed blocks first: the unhashed tail block
    # and untouched free blocks go before a's cached prefix.
    filler = make_request(list(range(100, 111)))  # 3 blocks
    kv.allocate(filler, 11)
    assert kv.find_prefix(again).num_tokens == 8
    big = make_request(list(range(200, 207)))     # 2 more blocks: must evict a's prefix
    kv.allocate(big, 7)
    assert kv.find_prefix(again).num_tokens < 8
    kv.free(filler)
    kv.free(big)
    kv.check_invariants([])
    assert kv.num_free_blocks == 6


def test_reviving_a_cached_free_block_counts_against_free_blocks():
    kv = make_kv(num_blocks=3, block_size=4)
    a = make_request(list(range(9)))
    _admit(kv, a)
    kv.free(a)
    b = make_request(list(range(9)) + [1, 2, 3, 4])  # needs 4 blocks: 2 cached + 2 new
    hit = kv.find_prefix(b)
    assert hit.num_tokens == 8
    assert not kv.can_allocate(b, b.num_tokens - 8, hit)
    kv.check_invariants([])


def test_swap_out_and_in_round_trip():
    kv = make_kv(num_blocks=4, block_size=4, num_host_blocks=4)
    r = make_request(list(range(6)))
    kv.allocate(r, 6)
    table = list(kv.block_table(r.request_id))
    assert kv.can_swap_out(r)
    out = kv.swap_out(r)
    assert [d for d, _ in out] == table
    assert kv.num_free_blocks == 4 and kv.host_pool.num_free == 2
    r.num_computed_tokens = 6
    assert kv.can_swap_in(r, 1)
    back = kv.swap_in(r)
    assert [h for h, _ in back] == [h for _, h in out]
    assert kv.host_pool.num_free == 4
    kv.free(r)
    kv.check_invariants([])


def test_double_free_is_detected():
    kv = make_kv(num_blocks=2, block_size=4)
    r = make_request([1, 2])
    kv.allocate(r, 2)
    block = kv.pool.blocks[kv.block_table(r.request_id)[0]]
    kv.free(r)
    try:
        kv.pool.release([block])
    except RuntimeError as exc:
        assert "freed twice" in str(exc)
    else:
        raise AssertionError("double free not detected")
