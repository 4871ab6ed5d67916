"""Builds what the engine runs: the model with its weights, the fastest exact linears and kernels, and the KV cache."""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import torch

from lamina.engine.config import EngineConfig, ModelConfig
from lamina.engine.kernels import native_kernels
from lamina.engine.kv_cache import KVCache
from lamina.engine.models.block_embedding import BlockEmbedding
from lamina.engine.models.block_quant import use_block_quant_linears
from lamina.engine.models import model_class
from lamina.engine.models.cpu_linear import (BF16Linear, Int8Linear, PackedLinear, packing_available,
                                             replace_linears)
from lamina.engine.models.llama import LlamaForCausalLM, RotaryEmbedding
from lamina.engine.tokenizer import Tokenizer


@dataclass(slots=True)
class BuiltModel:
    model: LlamaForCausalLM
    model_config: ModelConfig
    tokenizer: Tokenizer
    max_model_len: int  # the context: the config's limit, capped by the model's max_position_embeddings
    kernels: ModuleType | None  # the native C++ kernels in use (CPU fp32), else None
    linear_backend: str  # which linears run, e.g. "linears: 9 native (avx512) from the file's quantized blocks"
    cache: KVCache
    num_blocks: int
    panel_cache: str = ""  # how the native linears' panels were had, e.g. "panels: 121 mapped from the cache"


def build_model(model: str, cfg: EngineConfig) -> BuiltModel:
    """Load `model` (a name, .gguf file or HF folder), build it on cfg.device in cfg.dtype and size its KV cache.

    The model is built on the meta device (no memory, no random initialisation); the linears the native kernels run
    take the file's blocks first (and so does the embedding lookup, row by row), then the other parameters become
    the loaded tensors, each read once (a GGUF's are dequantized as they are read, so the native linears' weights
    and the embedding table never are).
    """
    from lamina.engine.loader import load_model

    dtype = cfg.torch_dtype
    loaded = load_model(model, dtype=torch.float32)
    mc, tokenizer = loaded.config, loaded.tokenizer
    max_model_len = min(cfg.max_model_len or mc.max_position_embeddings, mc.max_position_embeddings)
    with torch.device("meta"):  # no memory, no random initialisation (RoPE tables are computed on the CPU)
        net = model_class(mc.architecture)(mc, max_positions=max_model_len)
    net.tie_embeddings(loaded.weights)
    kernels = native_kernels() if cfg.native_kernels and cfg.device == "cpu" and dtype == torch.float32 else None
    native, panels = 0, ""
    if kernels is not None and loaded.quantized and cfg.quantization is None:
        native, panels = use_block_quant_linears(net, loaded.quantized, kernels, loaded.weights, loaded.source)
        embedding = loaded.quantized.get("model.embed_tokens.weight")
        if embedding is not None and not (net.tied and isinstance(net.lm_head, torch.nn.Linear)):
            net.embed_tokens = BlockEmbedding(embedding)  # rows dequantized as looked up (a tied fp32 head reads all)
    net.load_hf_weights(loaded.weights)
    net.to(device=cfg.device, dtype=dtype)
    for rope in (m for m in net.modules() if isinstance(m, RotaryEmbedding)):
        rope.to(torch.float32)
    linear_backend = _choose_linears(net, cfg, native, kernels)
    if kernels is not None:
        net.use_native_ops(kernels)
    del loaded  # the file's weights: free them before the KV cache is allocated
    per_block = KVCache.bytes_per_block(mc.num_hidden_layers, cfg.block_size, mc.num_key_value_heads, mc.head_dim, dtype)
    num_blocks = cfg.num_kv_blocks or max(16, int(cfg.kv_cache_memory_gb * 2**30) // per_block)
    cache = KVCache(mc.num_hidden_layers, num_blocks, cfg.block_size, mc.num_key_value_heads, mc.head_dim, dtype,
                    cfg.device)
    return BuiltModel(net, mc, tokenizer, max_model_len, kernels, linear_backend, cache, num_blocks, panels)


def _choose_linears(net: LlamaForCausalLM, cfg: EngineConfig, native: int, kernels: ModuleType | None) -> str:
    """Swap the model's remaining nn.Linears for the fastest exact CPU kind available; a line saying what runs."""
    dtype = cfg.torch_dtype
    if cfg.quantization == "int8":
        replace_linears(net, Int8Linear)
        return "linears: int8 (fbgemm, lossy)"
    if cfg.quantization == "bf16":
        replace_linears(net, BF16Linear)
        return "linears: bf16 (oneDNN, lossy)"
    if cfg.device != "cpu" or dtype != torch.float32:
        return f"linears: torch {dtype} on {cfg.device}"
    kinds = [f"{native} native ({kernels.isa}) from the file's quantized blocks"] if native and kernels else []
    remaining = sum(isinstance(m, (torch.nn.Linear, PackedLinear)) for m in net.modules())
    if remaining and cfg.pack_weights and packing_available():
        replace_linears(net, PackedLinear)
        kinds.append(f"{remaining} fp32 packed for oneDNN")
    elif remaining:
        kinds.append(f"{remaining} fp32 torch")
    return "linears: " + "; ".join(kinds)
