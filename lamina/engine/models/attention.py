"""Attention over the paged KV cache for a flattened batch: prefill segments first, then one token per decode."""
from __future__ import annotations

from dataclasses import dataclass, field

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
    k_cache: list[Tensor]  # per layer [num_blocks, block_size, kv_heads, head_dim]
    v_cache: list[Tensor]
    slot_mapping: Tensor  # [T] flat cache slot of every new token
    prefills: list[PrefillSegment] = field(default_factory=list)
    decode_start: int = 0  # rows [decode_start, T) are decodes
    decode_block_tables: Tensor | None = None  # [B, max_blocks]
    decode_mask: Tensor | None = None  # [B, 1, 1, max_blocks * block_size], 0 where visible, -inf beyond the context


def paged_attention(q: Tensor, k: Tensor, v: Tensor, meta: AttentionMetadata, layer: int, scale: float) -> Tensor:
    """q [T, heads, dim], k/v [T, kv_heads, dim] -> [T, heads, dim]; writes k/v into the cache first."""
    k_cache, v_cache = meta.k_cache[layer], meta.v_cache[layer]
    kv_heads, dim = k_cache.shape[-2:]
    k_cache.view(-1, kv_heads, dim).index_copy_(0, meta.slot_mapping, k)
    v_cache.view(-1, kv_heads, dim).index_copy_(0, meta.slot_mapping, v)
    out = torch.empty_like(q)
    for seg in meta.prefills:
        out[seg.start : seg.end] = _prefill(q[seg.start : seg.end], k, v, seg, k_cache, v_cache, scale)
    if meta.decode_block_tables is not None:
        out[meta.decode_start :] = _decode(q[meta.decode_start :], k_cache, v_cache, meta, scale)
    return out


def _prefill(q: Tensor, k: Tensor, v: Tensor, seg: PrefillSegment, k_cache: Tensor, v_cache: Tensor, scale: float) -> Tensor:
    n = q.shape[0]
    if seg.block_table is None:
        keys, values, mask, causal = k[seg.start : seg.end], v[seg.start : seg.end], None, True
    else:
        keys = _gather(k_cache, seg.block_table)[: seg.context_len]
        values = _gather(v_cache, seg.block_table)[: seg.context_len]
        query_pos = torch.arange(seg.context_len - n, seg.context_len).unsqueeze(1)
        mask, causal = torch.arange(seg.context_len).unsqueeze(0) <= query_pos, False
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1).unsqueeze(0),
        keys.transpose(0, 1).unsqueeze(0),
        values.transpose(0, 1).unsqueeze(0),
        attn_mask=mask,
        is_causal=causal,
        scale=scale,
        enable_gqa=True,
    )
    return out.squeeze(0).transpose(0, 1)


def _gather(cache: Tensor, block_table: Tensor) -> Tensor:
    """[num_blocks, block_size, kv_heads, dim] -> this sequence's [len(table) * block_size, kv_heads, dim]."""
    return cache[block_table].flatten(0, 1)


def _decode(q: Tensor, k_cache: Tensor, v_cache: Tensor, meta: AttentionMetadata, scale: float) -> Tensor:
    batch, heads, dim = q.shape
    kv_heads = k_cache.shape[2]
    tables = meta.decode_block_tables
    keys = k_cache[tables].flatten(1, 2).permute(0, 2, 3, 1)  # [B, kv_heads, dim, L]
    values = v_cache[tables].flatten(1, 2).transpose(1, 2)  # [B, kv_heads, L, dim]
    scores = torch.matmul(q.view(batch, kv_heads, heads // kv_heads, dim), keys).mul_(scale)
    probs = torch.softmax(scores.add_(meta.decode_mask), dim=-1)
    return torch.matmul(probs, values).view(batch, heads, dim)
