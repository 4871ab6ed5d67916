"""BlockManager: reference counts, prefix hashing, fork, copy-on-write, LRU reuse of freed blocks."""
from __future__ import annotations

import torch

from lamina.engine.kv_cache import BlockManager, KVCache
from lamina.engine.sampling_params import SamplingParams
from lamina.engine.sequence import Sequence


def seq(tokens: list[int]) -> Sequence:
    return Sequence("r", 0, list(tokens), len(tokens), SamplingParams(), torch.Generator())


def fill(manager: BlockManager, s: Sequence) -> list[int]:
    """Allocate and 'compute' every uncomputed token of s, as one forward pass would."""
    slots = manager.allocate(s, s.num_uncomputed_tokens)
    s.num_computed_tokens = len(s.token_ids)
    manager.register_full_blocks(s)
    return slots


def test_allocate_maps_tokens_to_distinct_slots_and_free_returns_blocks():
    m = BlockManager(num_blocks=8, block_size=4)
    a = seq(list(range(10)))
    slots = fill(m, a)
    assert len(slots) == len(set(slots)) == 10
    assert len(a.block_table) == 3 and m.num_free_blocks == 5
    m.free(a)
    assert m.num_free_blocks == 8 and a.block_table == []


def test_prefix_hit_shares_full_blocks_but_never_the_last_token():
    m = BlockManager(num_blocks=16, block_size=4)
    a = seq(list(range(12)))
    fill(m, a)
    b = seq(list(range(12)))
    assert m.match_prefix(b) == 8  # blocks 0 and 1; the block holding the last token is recomputed
    assert b.block_table == a.block_table[:2]
    assert all(m.blocks[i].ref_count == 2 for i in b.block_table)
    c = seq(list(range(8)) + [99, 98, 97, 96, 95])
    assert m.match_prefix(c) == 8
    d = seq([0, 1, 2, 99] + list(range(4, 12)))
    assert m.match_prefix(d) == 0, "a different first block breaks the chain for all later blocks"


def test_freed_blocks_stay_cached_until_evicted_lru():
    m = BlockManager(num_blocks=4, block_size=2)
    a = seq([1, 2, 3, 4, 5])
    fill(m, a)
    m.free(a)
    b = seq([1, 2, 3, 4, 5])
    assert m.match_prefix(b) == 4 and m.num_free_blocks == 2
    m.free(b)
    other = seq([7, 7, 7, 7, 7, 7, 7, 7])
    fill(m, other)  # needs all 4 blocks: evicts the cached ones
    m.free(other)
    c = seq([1, 2, 3, 4, 5])
    assert m.match_prefix(c) == 0


def test_fork_shares_every_block_and_copies_the_partial_tail_on_write():
    m = BlockManager(num_blocks=16, block_size=4)
    parent = seq(list(range(10)))
    fill(m, parent)
    children = [seq(list(range(10))) for _ in range(3)]
    for child in children:
        m.fork(parent, child)
    assert all(c.block_table == parent.block_table for c in children)
    assert m.num_free_blocks == 16 - 3
    tail = parent.block_table[-1]
    assert m.blocks[tail].ref_count == 4
    for s in [parent, *children]:
        s.token_ids.append(42)
        assert m.blocks_needed(s, 1) == (1 if m.blocks[s.block_table[-1]].ref_count > 1 else 0)
        m.allocate(s, 1)
        s.num_computed_tokens += 1
    copies = m.take_pending_copies()
    assert len(copies) == 3 and all(src == tail for src, _ in copies)
    assert len({s.block_table[-1] for s in [parent, *children]}) == 4
    assert all(s.block_table[:2] == parent.block_table[:2] for s in children)
    for s in [parent, *children]:
        m.free(s)
    assert m.num_free_blocks == 16


def test_kv_cache_copy_blocks_copies_contents():
    cache = KVCache(num_layers=2, num_blocks=4, block_size=2, kv_heads=1, head_dim=3)
    cache.k[1][:, 2].fill_(5.0)
    cache.v[0][:, 2].fill_(7.0)
    cache.copy_blocks([(2, 0)])
    assert bool((cache.k[1][:, 0] == 5.0).all()) and bool((cache.v[0][:, 0] == 7.0).all())
    assert bool((cache.k[1][:, 1] == 0).all()) and bool((cache.k[0][:, 0] == 0).all())
