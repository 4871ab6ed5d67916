"""Paged KV cache: a fixed pool of blocks with reference counts, prefix hashing, fork and copy-on-write.

A full block is registered under a hash chained over every token before it, so a later sequence whose prompt starts
with the same tokens reuses the block instead of recomputing it. Freed blocks keep their contents and stay findable
until the pool needs them again (least recently freed first).
"""
from __future__ import annotations

import math
import mmap
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor

from lamina.engine.sequence import Sequence


@dataclass(slots=True)
class Block:
    block_id: int
    ref_count: int = 0
    hash: int | None = None
    parent_hash: int | None = None
    tokens: tuple[int, ...] | None = None


class KVCache:
    """The tensors: per layer, keys and values of shape [kv_heads, num_blocks, block_size, head_dim].

    Head-major: the native decode kernel reads a (kv head, block) run contiguously, and the PyTorch path gathers a
    batch's slots per head in one copy, ready for a batched matmul.
    """

    def __init__(self, num_layers: int, num_blocks: int, block_size: int, kv_heads: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: str = "cpu") -> None:
        shape = (2 * num_layers, kv_heads, num_blocks, block_size, head_dim)
        if torch.device(device).type == "cpu":
            # One anonymous mapping: the OS maps zero pages as they are first touched, so a large pool costs nothing
            # at start-up (torch.zeros would write every byte of it). In small pages: with transparent huge pages
            # (numpy's calloc asks for them) the first write into each 2 MiB page zeroed (and compacted) all of
            # it, ~20 ms a page: over a second on a first request, which writes to every layer and head.
            size = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
            memory = mmap.mmap(-1, size)
            if hasattr(mmap, "MADV_NOHUGEPAGE"):
                memory.madvise(mmap.MADV_NOHUGEPAGE)
            pool = torch.frombuffer(memory, dtype=dtype).view(shape)
        else:
            pool = torch.zeros(shape, dtype=dtype, device=device)
        self.k = list(pool[:num_layers].unbind(0))
        self.v = list(pool[num_layers:].unbind(0))

    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        if not pairs:
            return
        src = torch.tensor([s for s, _ in pairs], device=self.k[0].device)
        dst = torch.tensor([d for _, d in pairs], device=self.k[0].device)
        for cache in (*self.k, *self.v):
            cache[:, dst] = cache[:, src]

    @staticmethod
    def bytes_per_block(num_layers: int, block_size: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * num_layers * block_size * kv_heads * head_dim * torch.empty(0, dtype=dtype).element_size()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_ids: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.cached: dict[int, int] = {}  # chained hash -> block id
        self.pending_copies: list[tuple[int, int]] = []  # (src, dst) copy-on-write work for the next forward

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_ids)

    def blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        """Fresh blocks to hold `num_new_tokens` more computed tokens, counting a copy-on-write of a shared tail."""
        total = -(-(seq.num_computed_tokens + num_new_tokens) // self.block_size)
        extra = max(0, total - len(seq.block_table))
        return extra + int(self._tail_needs_copy(seq))

    def match_prefix(self, seq: Sequence) -> int:
        """Share the cached blocks that start seq's tokens; return how many tokens they cover.

        The block holding the last token is never taken from the cache, so at least one token is computed. A sequence
        that scores its prompt (prompt_logprobs) takes nothing: every prompt position's logits must be computed.
        """
        assert not seq.block_table, "match_prefix on a sequence that already holds blocks"
        if not self.enable_prefix_caching or seq.prompt_logprobs is not None:
            return 0
        parent: int | None = None
        for i in range((len(seq.token_ids) - 1) // self.block_size):
            tokens = tuple(seq.token_ids[i * self.block_size : (i + 1) * self.block_size])
            block = self._lookup(parent, tokens)
            if block is None:
                break
            self._take(block)
            seq.block_table.append(block.block_id)
            parent = block.hash
        seq.num_computed_tokens = len(seq.block_table) * self.block_size
        return seq.num_computed_tokens

    def allocate(self, seq: Sequence, num_new_tokens: int) -> list[int]:
        """Make room for the next `num_new_tokens` of seq and return their flat cache slots.

        The caller checks `blocks_needed` against `num_free_blocks` first.
        """
        if self._tail_needs_copy(seq):
            self._copy_on_write(seq)
        start, end = seq.num_computed_tokens, seq.num_computed_tokens + num_new_tokens
        while len(seq.block_table) * self.block_size < end:
            seq.block_table.append(self._allocate_block().block_id)
        bs, table = self.block_size, seq.block_table
        return [table[p // bs] * bs + p % bs for p in range(start, end)]

    def register_full_blocks(self, seq: Sequence) -> None:
        """After a forward pass: publish seq's newly completed blocks to the prefix cache."""
        if not self.enable_prefix_caching:
            return
        parent: int | None = None
        for i in range(seq.num_computed_tokens // self.block_size):
            block = self.blocks[seq.block_table[i]]
            if block.hash is None:
                tokens = tuple(seq.token_ids[i * self.block_size : (i + 1) * self.block_size])
                key = hash((parent, tokens))
                block.hash, block.parent_hash, block.tokens = key, parent, tokens
                self.cached.setdefault(key, block.block_id)
            parent = block.hash

    def fork(self, parent: Sequence, child: Sequence) -> None:
        child.block_table = list(parent.block_table)
        child.num_computed_tokens = parent.num_computed_tokens
        for block_id in child.block_table:
            self.blocks[block_id].ref_count += 1

    def free(self, seq: Sequence) -> None:
        self._release(seq.block_table)
        seq.block_table = []
        seq.num_computed_tokens = 0

    def trim(self, seq: Sequence) -> None:
        """Give back seq's blocks past its computed tokens (those that held only rejected speculative drafts)."""
        keep = -(-seq.num_computed_tokens // self.block_size)
        self._release(seq.block_table[keep:])
        del seq.block_table[keep:]

    def _release(self, block_ids: list[int]) -> None:
        for block_id in reversed(block_ids):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free_ids[block_id] = None

    def take_pending_copies(self) -> list[tuple[int, int]]:
        pairs, self.pending_copies = self.pending_copies, []
        return pairs

    def _lookup(self, parent: int | None, tokens: tuple[int, ...]) -> Block | None:
        block_id = self.cached.get(hash((parent, tokens)))
        if block_id is None:
            return None
        block = self.blocks[block_id]
        return block if block.parent_hash == parent and block.tokens == tokens else None

    def _take(self, block: Block) -> None:
        if block.ref_count == 0:
            del self.free_ids[block.block_id]
        block.ref_count += 1

    def _allocate_block(self) -> Block:
        block_id, _ = self.free_ids.popitem(last=False)
        block = self.blocks[block_id]
        if block.hash is not None and self.cached.get(block.hash) == block_id:
            del self.cached[block.hash]
        block.hash = block.parent_hash = block.tokens = None
        block.ref_count = 1
        return block

    def _tail_needs_copy(self, seq: Sequence) -> bool:
        """True when the next token lands in a partially filled block that other sequences share."""
        pos = seq.num_computed_tokens
        if pos % self.block_size == 0 or pos // self.block_size >= len(seq.block_table):
            return False
        return self.blocks[seq.block_table[pos // self.block_size]].ref_count > 1

    def _copy_on_write(self, seq: Sequence) -> None:
        index = seq.num_computed_tokens // self.block_size
        old = self.blocks[seq.block_table[index]]
        new = self._allocate_block()
        old.ref_count -= 1
        seq.block_table[index] = new.block_id
        self.pending_copies.append((old.block_id, new.block_id))
