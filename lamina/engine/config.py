"""Model and engine configuration."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from lamina.errors import InvalidRequestError, UnsupportedModelError

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "gemma3")
HF_MODEL_TYPES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "gemma3_text": "gemma3"}  # config.json's
SLIDING, FULL = "sliding_attention", "full_attention"  # layer types, Hugging Face's names


@dataclass(slots=True)
class ModelConfig:
    architecture: str  # one of SUPPORTED_ARCHITECTURES
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # q/k/v projections carry a bias (Qwen2)
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    # Gemma 3 (None elsewhere): per-layer SLIDING or FULL attention, the window (tokens a query sees, itself
    # included), the sliding layers' RoPE base, the attention scale's denominator, and the final logit soft cap.
    layer_types: tuple[str, ...] | None = None
    sliding_window: int | None = None
    rope_local_theta: float | None = None
    query_pre_attn_scalar: float | None = None
    final_logit_softcapping: float | None = None

    def layer_window(self, layer: int) -> int | None:
        """The sliding window of `layer` in tokens, or None when it attends to the whole context."""
        if self.layer_types is None or self.layer_types[layer] != SLIDING:
            return None
        return self.sliding_window

    @classmethod
    def from_hf_dict(cls, cfg: dict[str, Any], source: str = "config.json") -> "ModelConfig":
        model_type = str(cfg.get("model_type", "")).lower()
        if model_type not in HF_MODEL_TYPES:
            raise UnsupportedModelError(
                f"{source}: unsupported architecture {model_type!r}; supported: {', '.join(HF_MODEL_TYPES)}"
            )
        architecture = HF_MODEL_TYPES[model_type]
        rope = dict(cfg.get("rope_scaling") or cfg.get("rope_parameters") or {})
        gemma = _gemma3_fields(cfg, rope) if architecture == "gemma3" else {}
        if gemma:
            rope = dict(rope.get(FULL) or {})
        rope_theta = float(cfg.get("rope_theta") or rope.pop("rope_theta", 10000.0))
        rope.pop("rope_theta", None)
        if rope.get("rope_type", rope.get("type", "default")) == "default":
            rope = {}
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        eos = cfg.get("eos_token_id")
        eos_ids = [] if eos is None else ([int(e) for e in eos] if isinstance(eos, list) else [int(eos)])
        return cls(
            architecture=architecture,
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(cfg["intermediate_size"]),
            num_hidden_layers=int(cfg["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
            rope_theta=rope_theta,
            rope_scaling=rope or None,
            max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=bool(cfg.get("attention_bias", model_type == "qwen2")),
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=eos_ids,
            **gemma,
        )


def _gemma3_fields(cfg: dict[str, Any], rope: dict[str, Any]) -> dict[str, Any]:
    """Gemma 3's extra fields from a Hugging Face `gemma3_text` config (rope_parameters keyed by layer type)."""
    layers = int(cfg["num_hidden_layers"])
    pattern = int(cfg.get("sliding_window_pattern", 6))
    types = cfg.get("layer_types") or [SLIDING if (i + 1) % pattern else FULL for i in range(layers)]
    local = dict(rope.get(SLIDING) or {})
    return dict(layer_types=tuple(types), sliding_window=int(cfg.get("sliding_window") or 4096),
                rope_local_theta=float(local.get("rope_theta") or cfg.get("rope_local_base_freq") or 10000.0),
                query_pre_attn_scalar=float(cfg.get("query_pre_attn_scalar") or cfg.get("head_dim") or 256),
                final_logit_softcapping=cfg.get("final_logit_softcapping"))


QUANTIZATIONS = (None, "int8", "bf16")


@dataclass(slots=True)
class EngineConfig:
    """How the engine runs a model; validated on construction (InvalidRequestError, one line naming option and value)."""

    block_size: int = 16
    num_kv_blocks: int | None = None  # None: sized from kv_cache_memory_gb
    kv_cache_memory_gb: float = 1.0
    max_num_seqs: int = 128
    max_num_batched_tokens: int = 2048  # token budget per scheduler step (prefill chunks + decodes)
    max_model_len: int | None = None  # None: the model's max_position_embeddings
    enable_prefix_caching: bool = True
    num_threads: int | None = None
    dtype: str = "float32"
    native_kernels: bool = True  # CPU fp32: C++ kernels (GEMMs on GGUF Q4_0/Q4_1/Q8_0 blocks, attention, sampler, norms)
    pack_weights: bool = True  # CPU fp32: linear weights pre-packed for oneDNN (faster, batch-invariant rows)
    quantization: str | None = None  # None (exact fp32), "int8" (CPU: int8 GEMMs, lossy) or "bf16" (CPU: bf16 linears)
    device: str = "cpu"

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> "EngineConfig":
        """`LLMEngine(model, **options)`'s options; an unknown name is an error listing the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise InvalidRequestError(f"unknown engine option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**options)

    def __post_init__(self) -> None:
        import torch

        if self.quantization not in QUANTIZATIONS:
            raise InvalidRequestError(f"engine option quantization={self.quantization!r}: expected one of {QUANTIZATIONS}")
        if self.quantization and self.device != "cpu":
            raise InvalidRequestError(f"engine option quantization={self.quantization!r} runs on the CPU only")
        if self.quantization == "bf16":
            from lamina.engine.models.cpu_linear import bf16_supported

            if not bf16_supported():
                raise InvalidRequestError("engine option quantization='bf16' needs a CPU with avx512_bf16 or amx_bf16 "
                                          "(and PyTorch with oneDNN); this one has neither")
        if not hasattr(torch, self.dtype) or not isinstance(getattr(torch, self.dtype), torch.dtype):
            raise InvalidRequestError(f"engine option dtype={self.dtype!r}: expected a torch dtype name such as 'float32'")
        for name in ("block_size", "max_num_seqs", "max_num_batched_tokens"):
            _check_int(name, getattr(self, name), minimum=1)
        for name in ("num_kv_blocks", "max_model_len", "num_threads"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), minimum=1)
        if isinstance(self.kv_cache_memory_gb, bool) or not isinstance(self.kv_cache_memory_gb, (int, float)) \
                or not self.kv_cache_memory_gb > 0:
            raise InvalidRequestError(f"engine option kv_cache_memory_gb={self.kv_cache_memory_gb!r}: expected a number > 0")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError):
            raise InvalidRequestError(f"engine option device={self.device!r}: expected a torch device such as 'cpu'") from None

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidRequestError(f"engine option {name}={value!r}: expected an integer >= {minimum}")
