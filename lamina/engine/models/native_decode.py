"""A Llama-family decode step in one native call (kernels/decode.cpp), instead of returning to Python per operation.

For a batch of decode rows only (one token each: plain decodes and speculative drafts, no prefill), every layer runs
in C++ on the weights handed over once at load: the same kernels, in the same order, on the same values as
LlamaForCausalLM.forward with native ops, so the hidden states are bitwise the Python path's and a seeded sample does
not depend on which path ran or on its batch mates. The Python path stays the reference and the fallback: prefill
steps, other model classes (Gemma 3), sliding windows, linears of another kind, no native kernels.
`LAMINA_NATIVE_DECODE=0` turns the native step off.
"""
from __future__ import annotations

import os
from types import ModuleType

from torch import Tensor, nn

from lamina.engine.models.attention import AttentionMetadata
from lamina.engine.models.block_quant import BlockQuantLinear
from lamina.engine.models.cpu_linear import PackedLinear
from lamina.engine.models.llama import MLP, DecoderLayer, LlamaForCausalLM, RMSNorm, RotaryEmbedding


def enabled() -> bool:
    value = os.environ.get("LAMINA_NATIVE_DECODE", "1").strip()
    if value not in ("0", "1"):
        raise ValueError(f"LAMINA_NATIVE_DECODE={value!r}: expected 0 or 1")
    return value == "1"


def _linear_spec(linear: nn.Module) -> tuple[str, list[Tensor], Tensor | None, int] | None:
    """How decode.cpp runs `linear` (see decode.h's LinearSpec), or None for a kind it does not run."""
    if isinstance(linear, BlockQuantLinear):
        return "block_quant", [linear.codes, linear.scales, linear.offsets], linear.bias, linear.out_features
    if isinstance(linear, PackedLinear):
        return "onednn", [linear.packed], linear.bias, linear.out_features
    if type(linear) is nn.Linear and linear.weight.dtype.is_floating_point:
        bias = None if linear.bias is None else linear.bias.detach()
        return "dense", [linear.weight.detach()], bias, linear.out_features
    return None


def unsupported_reason(model: nn.Module, kernels: ModuleType | None) -> str | None:
    """Why `model` cannot take the native decode step, or None when it can."""
    if kernels is None or not hasattr(kernels, "DecodeModel"):
        return "no native kernels"
    if type(model) is not LlamaForCausalLM:
        return f"{type(model).__name__} is not the plain Llama family"
    config = model.config
    if any(config.layer_window(i) is not None for i in range(config.num_hidden_layers)):
        return "sliding-window layers"
    if config.head_dim % 8:
        return f"head_dim {config.head_dim} is not a multiple of 8"
    for module in model.modules():
        if isinstance(module, (RMSNorm, RotaryEmbedding, MLP)) and module.native is None:
            return "native ops not in use"
    for layer in model.layers:
        if type(layer) is not DecoderLayer:
            return f"layer class {type(layer).__name__}"
        attn, mlp = layer.self_attn, layer.mlp
        for linear in (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj):
            if _linear_spec(linear) is None:
                return f"linear kind {type(linear).__name__}"
    return None


class NativeDecode:
    """`step(input_ids [T], positions [T], meta) -> hidden [T, hidden]` (final norm applied), for decode rows only."""

    def __init__(self, model: LlamaForCausalLM, kernels: ModuleType) -> None:
        config, rope = model.config, model.rope
        self.model = model
        self.impl = kernels.DecodeModel(config.num_attention_heads, config.num_key_value_heads, config.head_dim,
                                        model.norm.eps, rope.cos, rope.sin, model.norm.weight.detach())
        for layer in model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            specs = [_linear_spec(m) for m in (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj)]
            self.impl.add_layer(layer.input_layernorm.weight.detach(), layer.post_attention_layernorm.weight.detach(),
                                attn.scale, specs)

    def step(self, input_ids: Tensor, positions: Tensor, meta: AttentionMetadata) -> Tensor:
        if meta.prefills or meta.decode_start != 0 or meta.decode_block_tables is None:
            raise ValueError("the native decode step runs decode rows only")
        return self.impl.forward(self.model.embed(input_ids), positions, meta.k_cache, meta.v_cache, meta.slot_mapping,
                                 meta.decode_block_tables, meta.decode_lengths)


def native_decode(model: nn.Module, kernels: ModuleType | None) -> tuple[NativeDecode | None, str]:
    """The native decode step for `model` (None when it cannot have one or LAMINA_NATIVE_DECODE=0) and a line saying
    which decode path runs and why."""
    if not enabled():
        return None, "decode step: Python (LAMINA_NATIVE_DECODE=0)"
    reason = unsupported_reason(model, kernels)
    if reason is not None:
        return None, f"decode step: Python ({reason})"
    return NativeDecode(model, kernels), "decode step: native (all layers in one call)"
