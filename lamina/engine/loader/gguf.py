"""Load a GGUF file: config from metadata, Hugging Face-named weights (dequantized when read), tokenizer from metadata."""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q
from gguf import quants

from lamina.engine.config import FULL, SLIDING, SUPPORTED_ARCHITECTURES, ModelConfig
from lamina.engine.loader.gguf_reader import GGUFFile, GGUFTensor
from lamina.engine.loader.gguf_tokenizer import tokenizer_from_gguf
from lamina.engine.loader.types import NATIVE_QUANTS, LoadedModel, QuantizedWeight
from lamina.errors import ModelLoadError, UnsupportedModelError

SUPPORTED_QUANTS = frozenset({Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q4_K, Q.Q5_K, Q.Q6_K})
PERMUTED_ARCHITECTURES = frozenset({"llama", "mistral"})  # llama.cpp reorders their Q/K rows for its RoPE layout
_TOP = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight"}
_BLOCK = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
          "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
          "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
_GEMMA3_BLOCK = {**_BLOCK, "ffn_norm": "pre_feedforward_layernorm", "post_attention_norm": "post_attention_layernorm",
                 "post_ffw_norm": "post_feedforward_layernorm", "attn_q_norm": "self_attn.q_norm",
                 "attn_k_norm": "self_attn.k_norm"}
BLOCK_NAMES = {"gemma3": _GEMMA3_BLOCK}  # architectures whose block tensors differ from Llama's
NORM_PLUS_ONE = frozenset({"gemma3"})  # llama.cpp stores Gemma's RMSNorm weights as 1 + w (Hugging Face keeps w)
GEMMA3_SLIDING_PATTERN = 6  # every 6th layer attends globally (llama.cpp hard-codes it; the GGUF does not say)
_SKIPPED = ("rope_freqs.weight",)
_BLOCK_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


def load_gguf(path: Path, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """The file's config, tokenizer, raw blocks of the tensors native kernels can read (`quantized`) and `weights`,
    which dequantizes a tensor when it is read (the native linears' tensors are then never dequantized)."""
    gguf = GGUFFile.open(path)
    config = config_from_gguf(gguf)
    tensors, quantized = {}, {}
    for tensor in gguf.tensors.values():
        name = hf_name(gguf.path, tensor.name, config.architecture)
        if name is None or (config.tie_word_embeddings and name == "lm_head.weight"):
            continue
        check_supported(gguf.path, tensor)
        heads = _permuted_heads(config, name)
        plus_one = config.architecture in NORM_PLUS_ONE and name.endswith("norm.weight")
        tensors[name] = (tensor, heads, plus_one)
        if Q(tensor.qtype) in NATIVE_QUANTS and len(tensor.shape) == 2:
            rows = tensor.data.reshape(tensor.shape[0], -1)
            quantized[name] = QuantizedWeight(Q(tensor.qtype), rows if heads is None else unpermute(rows, heads), tensor.shape)
    weights = LazyWeights(gguf.path, tensors, dtype)
    return LoadedModel(config=config, weights=weights, tokenizer=tokenizer_from_gguf(gguf), source=gguf.path,
                       quantized=quantized)


class LazyWeights(Mapping[str, torch.Tensor]):
    """Hugging Face name -> the tensor, dequantized (and un-permuted; a Gemma norm's stored 1 + w back to w) from the
    file on each read; `reads` counts the reads per name (start-up reads each tensor at most once, and never one a
    native linear multiplies raw). tensors: name -> (GGUF tensor, heads to un-permute or None, stored as 1 + w)."""

    def __init__(self, path: Path, tensors: dict[str, tuple[GGUFTensor, int | None, bool]],
                 dtype: torch.dtype) -> None:
        self.path, self.tensors, self.dtype = path, tensors, dtype
        self.reads: Counter[str] = Counter()

    def __getitem__(self, name: str) -> torch.Tensor:
        tensor, heads, plus_one = self.tensors[name]
        self.reads[name] += 1
        array = dequantize(self.path, tensor)
        if plus_one:
            array = array - np.float32(1)
        return torch.from_numpy(array if heads is None else unpermute(array, heads)).to(self.dtype)

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def __contains__(self, name: object) -> bool:
        return name in self.tensors


def _permuted_heads(config: ModelConfig, name: str) -> int | None:
    """llama.cpp reorders the Q/K rows of Llama and Mistral; the head count to undo it with, else None."""
    if config.architecture not in PERMUTED_ARCHITECTURES:
        return None
    if name.endswith(("q_proj.weight", "q_proj.bias")):
        return config.num_attention_heads
    if name.endswith(("k_proj.weight", "k_proj.bias")):
        return config.num_key_value_heads
    return None


def hf_name(path: Path, name: str, architecture: str = "llama") -> str | None:
    if name in _TOP:
        return _TOP[name]
    if name in _SKIPPED:
        return None
    block = BLOCK_NAMES.get(architecture, _BLOCK)
    match = _BLOCK_RE.fullmatch(name)
    if match is None or match.group(2) not in block:
        raise UnsupportedModelError(f"{path}: unsupported tensor {name!r} (not part of a {architecture} model)")
    layer, part, kind = match.groups()
    return f"model.layers.{layer}.{block[part]}.{kind}"


def check_supported(path: Path, tensor: GGUFTensor) -> None:
    if Q(tensor.qtype) not in SUPPORTED_QUANTS:
        supported = ", ".join(sorted(q.name for q in SUPPORTED_QUANTS))
        raise UnsupportedModelError(f"{path}: tensor {tensor.name!r} has unsupported type {tensor.type_name}; supported: {supported}")


def dequantize(path: Path, tensor: GGUFTensor) -> np.ndarray:
    check_supported(path, tensor)
    qtype = Q(tensor.qtype)
    rows = tensor.data.reshape(-1, quants.quant_shape_to_byte_shape((tensor.shape[-1],), qtype)[0])
    if qtype == Q.F32:
        values = rows.view(np.float32).copy()
    elif qtype == Q.F16:
        values = rows.view(np.float16).astype(np.float32)
    else:
        values = dequantize_rows(rows, qtype)
    return np.ascontiguousarray(values, dtype=np.float32).reshape(tensor.shape)


DEQUANTIZE_CHUNK = 1 << 16  # values per call of gguf-py's row dequantizer


def dequantize_rows(rows: np.ndarray, qtype: Q) -> np.ndarray:
    """[n, bytes per row] of `qtype` blocks -> [n, values per row] float32, with gguf-py's arithmetic (the same
    values as `quants.dequantize`) but ~65k values per call: gguf-py's own loop takes 16 rows per call, whose overhead
    made the 49152-row Q8_0 embedding table take ~0.1 s instead of ~0.02 s."""
    kind = getattr(quants, qtype.name)
    block, type_size = GGML_QUANT_SIZES[qtype]
    width = rows.shape[1] // type_size * block
    out = np.empty((rows.shape[0], width), dtype=np.float32)
    step = max(1, DEQUANTIZE_CHUNK // max(width, 1))
    for start in range(0, rows.shape[0], step):
        out[start : start + step] = kind.dequantize_rows(rows[start : start + step])
    return out


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Invert llama.cpp's `permute`: rows (head, 2, half) back to Hugging Face's (head, half, 2) pairing."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def config_from_gguf(gguf: GGUFFile) -> ModelConfig:
    meta, path = gguf.metadata, gguf.path
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(f"{path}: unsupported architecture {arch!r}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}")

    def key(name: str, default: object = ModelLoadError) -> object:
        value = meta.get(f"{arch}.{name}", default)
        if value is ModelLoadError:
            raise ModelLoadError(f"{path}: GGUF metadata lacks required key '{arch}.{name}'")
        return value

    heads, hidden, layers = int(key("attention.head_count")), int(key("embedding_length")), int(key("block_count"))
    head_dim = int(key("attention.key_length", 0) or hidden // heads)
    embedding = gguf.tensors.get("token_embd.weight")
    vocab = embedding.shape[0] if embedding is not None else int(key("vocab_size", 0)) or len(meta.get("tokenizer.ggml.tokens", []))
    eos = meta.get("tokenizer.ggml.eos_token_id")
    context = int(key("context_length", 2048))
    return ModelConfig(
        architecture=arch,
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=int(key("feed_forward_length")),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=int(key("attention.head_count_kv", heads)),
        head_dim=head_dim,
        rms_norm_eps=float(key("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(key("rope.freq_base", 10000.0)),
        rope_scaling=_rope_scaling(gguf, arch, context),
        max_position_embeddings=context,
        tie_word_embeddings="output.weight" not in gguf.tensors,
        attention_bias="blk.0.attn_q.bias" in gguf.tensors,
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_ids=[] if eos is None else [int(eos)],
        **(_gemma3_fields(key, layers, hidden // heads, head_dim) if arch == "gemma3" else {}),
    )


def _gemma3_fields(key, layers: int, hidden_per_head: int, head_dim: int) -> dict:
    """Gemma 3's sliding-window layout, local RoPE base and attention scale, read as llama.cpp reads them."""
    pattern = int(key("attention.sliding_window_pattern", GEMMA3_SLIDING_PATTERN))
    return dict(
        layer_types=tuple(SLIDING if (i + 1) % pattern else FULL for i in range(layers)),
        sliding_window=int(key("attention.sliding_window")),
        rope_local_theta=float(key("rope.freq_base_swa", 10000.0)),
        # Gemma 3 27B scales by hidden / heads (query_pre_attn_scalar 168), every other size by head_dim
        query_pre_attn_scalar=float(hidden_per_head if layers == 62 else head_dim),
        final_logit_softcapping=key("final_logit_softcapping", None),
    )


def _rope_scaling(gguf: GGUFFile, arch: str, context: int) -> dict | None:
    kind = gguf.get(f"{arch}.rope.scaling.type")
    factor = gguf.get(f"{arch}.rope.scaling.factor")
    original = gguf.get(f"{arch}.rope.scaling.original_context_length")
    if "rope_freqs.weight" in gguf.tensors:
        return _llama3_scaling(gguf, arch, original)
    if kind in (None, "none") or not factor:
        return None
    if kind == "linear":
        return {"rope_type": "linear", "factor": float(factor)}
    if kind == "yarn":
        return {"rope_type": "yarn", "factor": float(factor), "original_max_position_embeddings": int(original or context)}
    raise UnsupportedModelError(f"{gguf.path}: unsupported rope scaling type {kind!r}; supported: linear, yarn")


def _llama3_scaling(gguf: GGUFFile, arch: str, original: int | None) -> dict | None:
    """Recover Llama 3 rope_scaling from the per-frequency factors llama.cpp stores in 'rope_freqs.weight'."""
    stored = dequantize(gguf.path, gguf.tensors["rope_freqs.weight"]).reshape(-1).astype(np.float64)
    if np.allclose(stored, 1.0):
        return None
    heads = int(gguf.get(f"{arch}.attention.head_count", 1))
    dim = int(gguf.get(f"{arch}.rope.dimension_count", 0) or int(gguf.get(f"{arch}.embedding_length", 0)) // heads)
    theta = float(gguf.get(f"{arch}.rope.freq_base", 10000.0))
    wavelen = 2 * np.pi * theta ** (np.arange(0, dim, 2) / dim)
    factor = float(stored.max())
    for old_len in ([int(original)] if original else [8192, 4096, 2048, 16384, 32768, 65536, 131072]):
        for low, high in ((1.0, 4.0), (1.0, 2.0), (1.0, 8.0)):
            smooth = (old_len / wavelen - low) / (high - low)
            mid = 1 / ((1 - smooth) / factor + smooth)
            expected = np.where(wavelen < old_len / high, 1.0, np.where(wavelen > old_len / low, factor, mid))
            if expected.shape == stored.shape and np.allclose(expected, stored, rtol=1e-4):
                return {"rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high,
                        "original_max_position_embeddings": old_len}
    raise UnsupportedModelError(f"{gguf.path}: tensor 'rope_freqs.weight' does not match Llama 3 rope scaling; "
                                "other per-frequency RoPE factors are not supported")
