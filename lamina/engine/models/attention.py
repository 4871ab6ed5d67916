"""Attention over the paged KV cache for a flattened batch: prefill segments first, then one token per decode.

A layer with a sliding window (Gemma 3's local layers) lets the query at position p see keys p - window + 1 .. p only
(Hugging Face's `kv > q - window`); the cache still holds every position, since the model's global layers read them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(slots=True)
class PrefillSegment:
    start: int  # first row of this sequence's new tokens in the flat batch
    end: int
    context_len: int  # tokens visible to the last new token (cached prefix + new tokens)
    block_table: Tensor | None  # None when nothing was cached before this chunk: attend to the new k/v directly


@dataclass(slots=True)
class AttentionMetadata:
    k_cache: list[Tensor]  # per layer [kv_heads, num_blocks, block_size, head_dim]
    v_cache: list[Tensor]
    slot_mapping: Tensor  # [T] flat cache slot of every new token
    prefills: list[PrefillSegment] = field(default_factory=list)
    decode_start: int = 0  # rows [decode_start, T) are decodes
    decode_block_tables: Tensor | None = None  # [B, max_blocks], padded with any valid block id
    decode_lengths: Tensor | None = None  # [B] context length of every decode, its new token included
    decode_mask: Tensor | None = None  # [1, B, 1, L], 0 where visible, -inf beyond the context (PyTorch path)
    kernels: ModuleType | None = None  # native CPU kernels (lamina.engine.kernels), when in use


def paged_attention(q: Tensor, k: Tensor, v: Tensor, meta: AttentionMetadata, layer: int, scale: float,
                    window: int | None = None) -> Tensor:
    """q [T, heads, dim], k/v [T, kv_heads, dim] -> [T, heads, dim]; writes k/v into the cache first. `window`: each
    query sees only the last `window` positions (itself included); None: the whole causal context."""
    k_cache, v_cache = meta.k_cache[layer], meta.v_cache[layer]
    _slots(k_cache).index_copy_(1, meta.slot_mapping, k.transpose(0, 1))
    _slots(v_cache).index_copy_(1, meta.slot_mapping, v.transpose(0, 1))
    out = torch.empty_like(q)
    for seg in meta.prefills:
        out[seg.start : seg.end] = _prefill(q[seg.start : seg.end], k, v, seg, k_cache, v_cache, scale, window)
    if meta.decode_block_tables is not None:
        out[meta.decode_start :] = _decode(q[meta.decode_start :], k_cache, v_cache, meta, scale, window)
    return out


def _slots(cache: Tensor) -> Tensor:
    """[kv_heads, num_blocks, block_size, dim] -> [kv_heads, num_slots, dim] (a view)."""
    return cache.view(cache.shape[0], -1, cache.shape[-1])


def _gather(cache: Tensor, tables: Tensor) -> Tensor:
    """The blocks of `tables` [..., n] -> [kv_heads, ..., n * block_size, dim], in one index_select (the fastest
    gather on CPU; advanced indexing is ~6x slower here)."""
    kv_heads, dim = cache.shape[0], cache.shape[-1]
    return cache.index_select(1, tables.flatten()).view(kv_heads, *tables.shape[:-1], -1, dim)


def _prefill(q: Tensor, k: Tensor, v: Tensor, seg: PrefillSegment, k_cache: Tensor, v_cache: Tensor,
             scale: float, window: int | None) -> Tensor:
    n, ctx = q.shape[0], seg.context_len
    if seg.block_table is None:
        keys, values = k[seg.start : seg.end].transpose(0, 1), v[seg.start : seg.end].transpose(0, 1)
    else:
        keys, values = _gather(k_cache, seg.block_table)[:, :ctx], _gather(v_cache, seg.block_table)[:, :ctx]
    mask, causal = None, True
    if seg.block_table is not None or (window is not None and ctx > window):
        query_pos, key_pos = torch.arange(ctx - n, ctx).unsqueeze(1), torch.arange(ctx).unsqueeze(0)
        mask, causal = key_pos <= query_pos, False
        if window is not None and ctx > window:
            mask &= key_pos > query_pos - window
    out = F.scaled_dot_product_attention(q.transpose(0, 1).unsqueeze(0), keys.unsqueeze(0), values.unsqueeze(0),
                                         attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=True)
    return out.squeeze(0).transpose(0, 1)


def _decode(q: Tensor, k_cache: Tensor, v_cache: Tensor, meta: AttentionMetadata, scale: float,
            window: int | None) -> Tensor:
    tables, lengths = meta.decode_block_tables, meta.decode_lengths
    if window is not None and int(lengths.max()) > window:
        # Rows past the window take the masked PyTorch path, the others the usual one: which path a row takes
        # depends on its own length only, so a seeded sample stays independent of its batch mates.
        beyond = lengths > window
        out = torch.empty_like(q)
        mask = decode_mask(lengths[beyond], tables.shape[1], k_cache, window)
        out[beyond] = _decode_torch(q[beyond], k_cache, v_cache, tables[beyond], mask, scale)
        if not bool(beyond.all()):
            inside = ~beyond
            part = AttentionMetadata(meta.k_cache, meta.v_cache, meta.slot_mapping, decode_block_tables=tables[inside],
                                     decode_lengths=lengths[inside], kernels=meta.kernels,
                                     decode_mask=None if meta.decode_mask is None else meta.decode_mask[:, inside])
            out[inside] = _decode(q[inside], k_cache, v_cache, part, scale, None)
        return out
    if meta.kernels is not None:
        return meta.kernels.paged_decode_attention(q.contiguous(), k_cache, v_cache, tables, lengths, scale)
    return _decode_torch(q, k_cache, v_cache, tables, meta.decode_mask, scale)


def decode_mask(lengths: Tensor, width: int, cache: Tensor, window: int | None) -> Tensor:
    """[1, B, 1, width * block_size]: 0 where a decode row sees the position, -inf elsewhere."""
    pos = torch.arange(width * cache.shape[2]).unsqueeze(0)
    visible = pos < lengths.unsqueeze(1)
    if window is not None:
        visible &= pos >= (lengths - window).unsqueeze(1)
    return torch.zeros(visible.shape, dtype=cache.dtype).masked_fill_(~visible, float("-inf"))[None, :, None, :]


def _decode_torch(q: Tensor, k_cache: Tensor, v_cache: Tensor, tables: Tensor, mask: Tensor, scale: float) -> Tensor:
    batch, heads, dim = q.shape
    kv_heads = k_cache.shape[0]
    keys, values = _gather(k_cache, tables), _gather(v_cache, tables)  # [kv_heads, B, L, dim]
    grouped = q.view(batch, kv_heads, heads // kv_heads, dim).transpose(0, 1)  # [kv_heads, B, group, dim]
    scores = torch.matmul(grouped, keys.transpose(-1, -2)).mul_(scale).add_(mask)
    out = torch.matmul(torch.softmax(scores, dim=-1), values)  # [kv_heads, B, group, dim]
    return out.transpose(0, 1).reshape(batch, heads, dim)
