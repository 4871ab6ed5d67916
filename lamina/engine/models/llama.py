"""The Llama family (Llama, SmolLM2, Mistral, Qwen2) over a paged KV cache, readable top to bottom.

Tokens of all sequences in a step are flattened into one batch (`input_ids[T]`, `positions[T]`); attention reads
and writes the paged cache through the step's `AttentionMetadata` (see attention.py).
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lamina.engine.config import ModelConfig
from lamina.engine.models.attention import AttentionMetadata, paged_attention
from lamina.errors import ModelLoadError, UnsupportedModelError


def rope_inv_freq(config: ModelConfig) -> tuple[Tensor, float]:
    """Inverse frequencies and attention scaling for the config's RoPE variant."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    scaling = dict(config.rope_scaling or {})
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv_freq, 1.0
    if kind == "linear":
        return inv_freq / float(scaling["factor"]), 1.0
    if kind == "llama3":
        factor = float(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_len = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv_freq
        smooth = (old_len / wavelen - low) / (high - low)
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        mid = (wavelen <= old_len / low) & (wavelen >= old_len / high)
        return torch.where(mid, (1 - smooth) * inv_freq / factor + smooth * inv_freq, scaled), 1.0
    if kind == "yarn":
        factor = float(scaling["factor"])
        old_len = float(scaling.get("original_max_position_embeddings", config.max_position_embeddings))
        beta_fast, beta_slow = float(scaling.get("beta_fast", 32)), float(scaling.get("beta_slow", 1))

        def correction_dim(rotations: float) -> float:
            return dim * math.log(old_len / (rotations * 2 * math.pi)) / (2 * math.log(config.rope_theta))

        low = max(math.floor(correction_dim(beta_fast)), 0)
        high = min(math.ceil(correction_dim(beta_slow)), dim - 1)
        ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / max(high - low, 1e-3)).clamp(0, 1)
        extrapolation = 1 - ramp
        inv = inv_freq / factor * (1 - extrapolation) + inv_freq * extrapolation
        mscale = float(scaling.get("attention_factor") or (0.1 * math.log(factor) + 1.0))
        return inv, mscale
    raise UnsupportedModelError(f"unsupported rope_scaling type {kind!r}; supported: default, linear, llama3, yarn")


class RotaryEmbedding(nn.Module):
    def __init__(self, config: ModelConfig, max_positions: int) -> None:
        super().__init__()
        with torch.device("cpu"):  # real tables even while the model is built on the meta device
            inv_freq, mscale = rope_inv_freq(config)
            freqs = torch.outer(torch.arange(max_positions, dtype=torch.float64), inv_freq)
            emb = torch.cat([freqs, freqs], dim=-1)
            self.register_buffer("cos", (emb.cos() * mscale).float(), persistent=False)
            self.register_buffer("sin", (emb.sin() * mscale).float(), persistent=False)
        self.native: ModuleType | None = None

    def forward(self, positions: Tensor, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        if self.native is not None:
            self.native.rope_(q, k, self.cos, self.sin, positions)
            return q, k
        cos, sin = self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size), requires_grad=False)
        self.eps = eps
        self.native: ModuleType | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.native is not None:
            return self.native.rms_norm(x.contiguous(), self.weight, self.eps)
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.num_heads, self.num_kv_heads, self.head_dim = (
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
        )
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.qkv_proj = nn.Linear(config.hidden_size, self.q_size + 2 * self.kv_size, bias=config.attention_bias)
        self.o_proj = nn.Linear(self.q_size, config.hidden_size, bias=False)
        self.scale = (config.query_pre_attn_scalar or self.head_dim) ** -0.5
        self.window = config.layer_window(layer_id)  # tokens a query sees; None: the whole context

    def forward(self, x: Tensor, positions: Tensor, rope: RotaryEmbedding, meta: AttentionMetadata) -> Tensor:
        q, k, v = self.project(x)
        q, k = rope(positions, q, k)
        return self.attend(q, k, v, meta)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [T, hidden] -> q [T, heads, head_dim], k and v [T, kv_heads, head_dim]."""
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        return (q.view(-1, self.num_heads, self.head_dim), k.view(-1, self.num_kv_heads, self.head_dim),
                v.view(-1, self.num_kv_heads, self.head_dim))

    def attend(self, q: Tensor, k: Tensor, v: Tensor, meta: AttentionMetadata) -> Tensor:
        """Paged attention of the rotated q/k and v, then the output projection -> [T, hidden]."""
        out = paged_attention(q, k, v, meta, self.layer_id, self.scale, self.window)
        return self.o_proj(out.reshape(-1, self.q_size))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.intermediate = config.intermediate_size
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.native: ModuleType | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.native is not None:
            return self.down_proj(self.native.silu_mul(self.gate_up_proj(x)))
        gate, up = self.gate_up_proj(x).split(self.intermediate, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_id)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, positions: Tensor, rope: RotaryEmbedding, meta: AttentionMetadata) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), positions, rope, meta)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaForCausalLM(nn.Module):
    layer_class: type[nn.Module] = DecoderLayer
    norm_weight_offset = 0.0  # added to every loaded RMSNorm weight (Gemma scales by 1 + weight)

    def __init__(self, config: ModelConfig, max_positions: int | None = None) -> None:
        super().__init__()
        self.config = config
        # given its (empty) weight, nn.Embedding skips normal_(), which on the meta device imports torch._dynamo (~1 s)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size,
                                         _weight=torch.empty(config.vocab_size, config.hidden_size))
        self.layers = nn.ModuleList(self.layer_class(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rope = RotaryEmbedding(config, max_positions or config.max_position_embeddings)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tied = config.tie_word_embeddings  # lm_head shares the embeddings (final once the weights are known)
        self.requires_grad_(False)

    def forward(self, input_ids: Tensor, positions: Tensor, meta: AttentionMetadata) -> Tensor:
        x = self.embed(input_ids)
        for layer in self.layers:
            x = layer(x, positions, self.rope_of(layer), meta)
        return self.norm(x)

    def embed(self, input_ids: Tensor) -> Tensor:
        """input_ids [T] -> the first layer's input [T, hidden]."""
        return self.embed_tokens(input_ids)

    def rope_of(self, layer: nn.Module) -> RotaryEmbedding:
        return self.rope

    def compute_logits(self, hidden: Tensor) -> Tensor:
        return self.lm_head(hidden)

    def use_native_ops(self, kernels: ModuleType) -> None:
        """Run RMSNorm, RoPE and SiLU-and-multiply with the native CPU kernels (fp32, CPU tensors)."""
        for module in self.modules():
            if isinstance(module, (RMSNorm, RotaryEmbedding, MLP)):
                module.native = kernels

    def linear_sources(self) -> Iterator[tuple[nn.Module, str, list[str]]]:
        """Every linear as (parent module, attribute, the Hugging Face weights stacked into it, in order)."""
        for i, layer in enumerate(self.layers):
            p = f"model.layers.{i}."
            yield layer.self_attn, "qkv_proj", [p + f"self_attn.{n}_proj.weight" for n in "qkv"]
            yield layer.self_attn, "o_proj", [p + "self_attn.o_proj.weight"]
            yield layer.mlp, "gate_up_proj", [p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"]
            yield layer.mlp, "down_proj", [p + "mlp.down_proj.weight"]
        yield self, "lm_head", ["model.embed_tokens.weight" if self.tied else "lm_head.weight"]

    def tie_embeddings(self, weights: Mapping[str, Tensor]) -> None:
        """Decide whether lm_head shares the embeddings (the config says so, or the weights lack lm_head.weight)."""
        self.tied = self.config.tie_word_embeddings or "lm_head.weight" not in weights

    def load_hf_weights(self, weights: Mapping[str, Tensor]) -> None:
        """Take Hugging Face-named weights as the parameters (no copies; each tensor read once), fusing q/k/v and
        gate/up projections. Linears already replaced (native kernels reading the file's blocks) are skipped, so a
        model built on the meta device is materialised here without random initialisation."""
        get = _WeightGetter(weights)
        self.tie_embeddings(weights)
        if isinstance(self.embed_tokens, nn.Embedding):  # else it reads the file's blocks (block_embedding.py)
            self.embed_tokens.weight = _parameter(get("model.embed_tokens.weight"))
        if self.tied and isinstance(self.lm_head, nn.Linear):
            self.lm_head.weight = self.embed_tokens.weight
        for parent, attr, names in self.linear_sources():
            linear = getattr(parent, attr)
            if isinstance(linear, nn.Linear) and not (self.tied and linear is self.lm_head):
                load_linear(linear, names, weights)
        for norm, name in self.norm_sources():
            weight = get(name)
            norm.weight = _parameter(weight + self.norm_weight_offset if self.norm_weight_offset else weight)

    def norm_sources(self) -> Iterator[tuple[RMSNorm, str]]:
        """Every RMSNorm with the Hugging Face weight it loads."""
        yield self.norm, "model.norm.weight"
        for i, layer in enumerate(self.layers):
            p = f"model.layers.{i}."
            yield layer.input_layernorm, p + "input_layernorm.weight"
            yield layer.post_attention_layernorm, p + "post_attention_layernorm.weight"


def load_linear(linear: nn.Linear, names: list[str], weights: Mapping[str, Tensor]) -> None:
    """Set `linear`'s weight (and bias) to the named weights stacked along out_features."""
    get = _WeightGetter(weights)
    parts = [get(name) for name in names]
    linear.weight = _parameter(parts[0] if len(parts) == 1 else torch.cat(parts))
    if linear.bias is not None:
        linear.bias = _parameter(torch.cat([get(name.removesuffix("weight") + "bias") for name in names]))


def _parameter(tensor: Tensor) -> nn.Parameter:
    return nn.Parameter(tensor, requires_grad=False)


class _WeightGetter:
    __slots__ = ("weights",)

    def __init__(self, weights: dict[str, Tensor]) -> None:
        self.weights = weights

    def __call__(self, name: str) -> Tensor:
        try:
            return self.weights[name]
        except KeyError:
            raise ModelLoadError(f"model weights lack tensor {name!r}") from None
