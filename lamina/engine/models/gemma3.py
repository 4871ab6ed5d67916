"""Gemma 3 (text) over the paged KV cache, readable top to bottom; what it shares with Llama comes from llama.py.

Differences from Llama, all as in Hugging Face's Gemma3ForCausalLM:
- layers alternate local and global attention (`config.layer_types`; 5 local : 1 global): a local layer sees the
  last `config.sliding_window` positions and rotates with its own RoPE base (`rope_local_theta`, 10k), a global
  layer sees the whole context with the model's `rope_theta` (1M) and its rope scaling;
- queries and keys are RMS-normalised per head before RoPE; attention scales by `query_pre_attn_scalar ** -0.5`;
- every block has four norms: before and after attention, before and after the MLP;
- RMSNorm multiplies by (1 + weight): the offset is added once when loading (GGUF files store 1 + weight already,
  and the GGUF loader hands over Hugging Face's `weight`, so both sources load the same way);
- the MLP is gated GELU (tanh approximation) instead of SiLU;
- token embeddings are multiplied by sqrt(hidden_size); the output head is the (tied) embedding;
- logits are soft-capped, cap * tanh(logits / cap), when `final_logit_softcapping` is set (not for Gemma 3).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lamina.engine.config import SLIDING, ModelConfig
from lamina.engine.models.attention import AttentionMetadata
from lamina.engine.models.llama import MLP, Attention, LlamaForCausalLM, RMSNorm, RotaryEmbedding


class Gemma3Attention(Attention):
    def __init__(self, config: ModelConfig, layer_id: int) -> None:
        super().__init__(config, layer_id)  # sets the scale from query_pre_attn_scalar and the layer's window
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)

    def forward(self, x: Tensor, positions: Tensor, rope: RotaryEmbedding, meta: AttentionMetadata) -> Tensor:
        q, k, v = self.project(x)
        q, k = rope(positions, _per_head(self.q_norm, q), _per_head(self.k_norm, k))
        return self.attend(q, k, v, meta)


def _per_head(norm: RMSNorm, x: Tensor) -> Tensor:
    """RMSNorm over head_dim of x [T, heads, head_dim]."""
    return norm(x.reshape(-1, x.shape[-1])).view(x.shape)


class GeluMLP(MLP):
    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up_proj(x).split(self.intermediate, dim=-1)
        return self.down_proj(F.gelu(gate, approximate="tanh") * up)


class Gemma3DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int) -> None:
        super().__init__()
        size, eps = config.hidden_size, config.rms_norm_eps
        self.input_layernorm = RMSNorm(size, eps)
        self.self_attn = Gemma3Attention(config, layer_id)
        self.post_attention_layernorm = RMSNorm(size, eps)
        self.pre_feedforward_layernorm = RMSNorm(size, eps)
        self.mlp = GeluMLP(config)
        self.post_feedforward_layernorm = RMSNorm(size, eps)

    def forward(self, x: Tensor, positions: Tensor, rope: RotaryEmbedding, meta: AttentionMetadata) -> Tensor:
        x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), positions, rope, meta))
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class Gemma3ForCausalLM(LlamaForCausalLM):
    layer_class = Gemma3DecoderLayer
    norm_weight_offset = 1.0

    def __init__(self, config: ModelConfig, max_positions: int | None = None) -> None:
        super().__init__(config, max_positions)
        local = dataclasses.replace(config, rope_theta=config.rope_local_theta or config.rope_theta, rope_scaling=None)
        self.rope_local = RotaryEmbedding(local, max_positions or config.max_position_embeddings)
        self.embed_scale = config.hidden_size**0.5
        self.lm_head.weight = self.embed_tokens.weight  # Gemma ties its output head to the embeddings

    def embed(self, input_ids: Tensor) -> Tensor:
        x = self.embed_tokens(input_ids)
        return x * torch.tensor(self.embed_scale, dtype=x.dtype)

    def rope_of(self, layer: nn.Module) -> RotaryEmbedding:
        return self.rope_local if self.config.layer_types[layer.self_attn.layer_id] == SLIDING else self.rope

    def compute_logits(self, hidden: Tensor) -> Tensor:
        logits = self.lm_head(hidden)
        cap = self.config.final_logit_softcapping
        return logits if cap is None else torch.tanh(logits / cap) * cap

    def norm_sources(self) -> Iterator[tuple[RMSNorm, str]]:
        yield from super().norm_sources()
        for i, layer in enumerate(self.layers):
            p = f"model.layers.{i}."
            yield layer.pre_feedforward_layernorm, p + "pre_feedforward_layernorm.weight"
            yield layer.post_feedforward_layernorm, p + "post_feedforward_layernorm.weight"
            yield layer.self_attn.q_norm, p + "self_attn.q_norm.weight"
            yield layer.self_attn.k_norm, p + "self_attn.k_norm.weight"
