"""Native CPU kernels. The block-quantized GEMM multiplies exactly the dequantized weights, matches fp32 and keeps
rows batch-invariant, and the engine uses it for a GGUF's Q4_0/Q4_1/Q8_0 linears with unchanged outputs. Paged
decode attention matches the PyTorch path over ragged block tables, per sequence and batch-invariantly."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import quants

from lamina import LLM, SamplingParams
from lamina.engine.kernels import native_kernels, unavailable_reason
from lamina.engine.loader.types import QuantizedWeight
from lamina.engine.models.attention import AttentionMetadata, _decode
from lamina.engine.models.block_quant import BlockQuantLinear, native_parts
from tests.conftest import assert_pool_full
from tests.test_loader import byte_vocab, random_hf_weights, write_gguf


@pytest.fixture(scope="module")
def kernel():
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("the native kernel needs an x86 CPU with AVX2/FMA")
    module = native_kernels()
    assert module is not None, f"native kernel failed to build on an AVX2 CPU: {unavailable_reason()}"
    return module


def quantized(qtype: Q, shape: tuple[int, int], seed: int = 0) -> tuple[QuantizedWeight, torch.Tensor]:
    """Random weights stored as `qtype` blocks, and their reference dequantization."""
    array = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    rows = quants.quantize(array, qtype)
    return QuantizedWeight(qtype, rows, shape), torch.from_numpy(quants.dequantize(rows, qtype).astype(np.float32))


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1, Q.Q8_0], ids=lambda q: q.name)
def test_kernel_multiplies_exactly_the_dequantized_weights(kernel, qtype):
    weight, reference = quantized(qtype, (40, 96))  # 40 outputs: two full panels and a partial one
    linear = BlockQuantLinear([weight], None, kernel)
    assert torch.equal(linear(torch.eye(96)).T, reference)  # one-hot rows pick each weight out untouched


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1, Q.Q8_0], ids=lambda q: q.name)
@pytest.mark.parametrize("rows", [1, 5, 6, 7, 32, 33])
def test_kernel_matches_fp32_linear_and_rows_are_batch_invariant(kernel, qtype, rows):
    weight, reference = quantized(qtype, (50, 128), seed=rows)
    bias = torch.randn(50)
    linear = BlockQuantLinear([weight], bias, kernel)
    x = torch.randn(rows, 128)
    out = linear(x)
    expected = (x.double() @ reference.double().T + bias.double()).float()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-4)
    for row in range(rows):
        assert torch.equal(linear(x[row : row + 1])[0], out[row]), f"row {row} changed with its batch mates"
    assert linear(x.view(1, rows, 128)).shape == (1, rows, 50)


def test_fused_parts_stack_along_outputs(kernel):
    (q, q_ref), (k, k_ref) = quantized(Q.Q4_1, (24, 64), 1), quantized(Q.Q4_1, (8, 64), 2)
    fused = BlockQuantLinear([q, k], None, kernel)
    assert fused.out_features == 32
    assert torch.equal(fused(torch.eye(64)).T, torch.cat([q_ref, k_ref]))


def test_native_parts_refuses_what_the_kernel_cannot_run():
    q41, _ = quantized(Q.Q4_1, (16, 64))
    q80, _ = quantized(Q.Q8_0, (16, 64))
    q40, _ = quantized(Q.Q4_0, (16, 64))
    f16 = QuantizedWeight(Q.F16, np.zeros((16, 128), np.uint8), (16, 64))
    store = {"a": q41, "b": q80, "c": q40, "d": f16}
    assert native_parts(store, ["a"]) == [q41]
    assert native_parts(store, ["b", "c"]) == [q80, q40]  # both signed codes with a scale: one kind
    assert native_parts(store, ["a", "b"]) is None  # Q4_1's offsets cannot share a panel with Q8_0
    assert native_parts(store, ["d"]) is None
    assert native_parts(store, ["a", "missing"]) is None


def test_disabled_by_environment_says_why(monkeypatch):
    from lamina.engine import kernels

    monkeypatch.setenv("LAMINA_NATIVE_KERNELS", "0")
    monkeypatch.setattr(kernels, "_state", {})
    assert kernels.native_kernels() is None
    assert "LAMINA_NATIVE_KERNELS=0" in kernels.unavailable_reason()


def _block_typed(name: str, array: np.ndarray) -> Q:
    if array.ndim == 1:
        return Q.F32
    return Q.Q8_0 if "embed" in name or "lm_head" in name or "down_proj" in name else Q.Q4_1


@pytest.mark.parametrize("arch, tied, bias", [("llama", False, False), ("qwen2", True, True)])
def test_engine_on_block_quantized_gguf_equals_fp32_path(kernel, tmp_path, arch, tied, bias):
    weights = random_hf_weights(len(byte_vocab()), tied, bias)
    path = write_gguf(tmp_path / f"{arch}.gguf", arch, weights, permute=arch == "llama", types=_block_typed)
    native = LLM(str(path), num_kv_blocks=64, block_size=4)
    fp32 = LLM(str(path), num_kv_blocks=64, block_size=4, native_kernels=False)
    assert native.engine.linear_backend == "linears: 9 native from the file's quantized blocks"  # 2 layers x 4 + head
    assert fp32.engine.linear_backend == "linears: 9 fp32 packed for oneDNN"
    prompts = ["the the", "he the t"]
    greedy = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=3)
    for a, b in zip(native.generate(prompts, greedy), fp32.generate(prompts, greedy)):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        for x, y in zip(a.outputs[0].logprobs, b.outputs[0].logprobs):
            assert x.logprob == pytest.approx(y.logprob, abs=1e-4)
    seeded = SamplingParams(n=4, temperature=1.0, seed=3, max_tokens=10, ignore_eos=True)
    alone = native.generate(["the the"], seeded)[0]
    crowded = native.generate(["he the t", "the the", "t he"], seeded)[1]
    assert [c.token_ids for c in alone.outputs] == [c.token_ids for c in crowded.outputs]
    assert_pool_full(native)


def _paged_case(lengths: list[int], kv_heads: int, group: int, dim: int, block_size: int = 4, seed: int = 0):
    """Random caches, and each sequence's blocks scattered over the pool in a random order (shared ones too)."""
    gen = torch.Generator().manual_seed(seed)
    width = max(-(-n // block_size) for n in lengths)
    num_blocks = 2 * width * len(lengths) + 3
    k_cache = torch.randn(kv_heads, num_blocks, block_size, dim, generator=gen) * 3
    v_cache = torch.randn(kv_heads, num_blocks, block_size, dim, generator=gen)
    tables = torch.randperm(num_blocks, generator=gen)[: len(lengths) * width].view(len(lengths), width).clone()
    tables[-1, :1] = tables[0, :1]  # two sequences share a prefix block
    q = torch.randn(len(lengths), kv_heads * group, dim, generator=gen)
    return q, k_cache, v_cache, tables, torch.tensor(lengths)


def _torch_decode(q, k_cache, v_cache, tables, lengths, scale):
    block_size = k_cache.shape[2]
    visible = torch.arange(tables.shape[1] * block_size).unsqueeze(0) < lengths.unsqueeze(1)
    mask = torch.zeros(visible.shape).masked_fill_(~visible, float("-inf"))[None, :, None, :]
    meta = AttentionMetadata([k_cache], [v_cache], torch.empty(0), decode_block_tables=tables, decode_mask=mask)
    return _decode(q, k_cache, v_cache, meta, scale)


@pytest.mark.parametrize("kv_heads, group, dim", [(3, 3, 64), (2, 1, 128), (1, 4, 8)])
def test_paged_decode_attention_matches_pytorch(kernel, kv_heads, group, dim):
    lengths = [1, 4, 5, 17, 33, 2]  # one token, exactly a block, one past it, longer ones
    q, k_cache, v_cache, tables, lens = _paged_case(lengths, kv_heads, group, dim)
    scale = dim**-0.5
    got = kernel.paged_decode_attention(q, k_cache, v_cache, tables, lens, scale)
    torch.testing.assert_close(got, _torch_decode(q, k_cache, v_cache, tables, lens, scale), rtol=1e-5, atol=1e-5)
    for row in range(len(lengths)):
        alone = kernel.paged_decode_attention(q[row : row + 1].contiguous(), k_cache, v_cache, tables[row : row + 1].contiguous(),
                                              lens[row : row + 1], scale)
        assert torch.equal(alone[0], got[row]), f"sequence {row} changed with its batch mates"


def test_paged_decode_attention_with_extreme_scores(kernel):
    """Scores thousands apart: the far ones underflow to exactly zero weight, as in PyTorch's softmax."""
    q, k_cache, v_cache, tables, lens = _paged_case([40, 9], 1, 2, 16, seed=1)
    k_cache *= 40
    got = kernel.paged_decode_attention(q, k_cache, v_cache, tables, lens, 1.0)
    torch.testing.assert_close(got, _torch_decode(q, k_cache, v_cache, tables, lens, 1.0), rtol=1e-5, atol=1e-5)


def test_paged_decode_attention_rejects_bad_input(kernel):
    q, k_cache, v_cache, tables, lens = _paged_case([5, 3], 1, 1, 8)
    with pytest.raises(RuntimeError, match="length beyond the block table"):
        kernel.paged_decode_attention(q, k_cache, v_cache, tables, torch.tensor([5, 999]), 1.0)
    with pytest.raises(RuntimeError, match="int64"):
        kernel.paged_decode_attention(q, k_cache, v_cache, tables.int(), lens, 1.0)
    bad = tables.clone()
    bad[0, 0] = 10_000
    with pytest.raises(RuntimeError, match="block id out of range"):
        kernel.paged_decode_attention(q, k_cache, v_cache, bad, lens, 1.0)


def _torch_sample(logits, temps, top_ks, top_ps, min_ps, draws):
    """The PyTorch sampler's filters and inverse CDF, and each row's distance from a CDF step (ties are float noise)."""
    from types import SimpleNamespace

    from lamina.engine.sampler import _filter, _inverse_cdf

    seqs = [SimpleNamespace(params=SimpleNamespace(temperature=t, top_k=k, top_p=p, min_p=m))
            for t, k, p, m in zip(temps.tolist(), top_ks.tolist(), top_ps.tolist(), min_ps.tolist())]
    probs = _filter(logits.clone(), seqs).softmax(-1)
    cdf = probs.double().cumsum(-1)
    margin = ((cdf - (draws * cdf[:, -1]).unsqueeze(1)).abs() / cdf[:, -1:]).min(-1).values
    return _inverse_cdf(probs, draws), probs > 0, margin


@pytest.mark.parametrize("scale", [0.3, 2.0, 8.0])
def test_native_sampler_draws_what_the_pytorch_sampler_draws(kernel, scale):
    gen = torch.Generator().manual_seed(int(scale * 10))
    rows, vocab = 64, 3000
    logits = torch.randn(rows, vocab, generator=gen) * scale
    temps = torch.tensor([0.7, 1.0, 1.3, 0.05] * 16, dtype=torch.float32)
    top_ks = torch.tensor([0, 0, 40, 5, 0, 1, 0, 0] * 8)
    top_ps = torch.tensor([1.0, 0.9, 0.95, 1.0, 0.5, 1.0, 0.99, 0.3] * 8, dtype=torch.float32)
    min_ps = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.05, 0.1] * 8, dtype=torch.float32)
    draws = torch.rand(rows, generator=gen, dtype=torch.float64)
    got = kernel.sample_rows(logits, temps, top_ks, top_ps, min_ps, draws)
    expected, support, margin = _torch_sample(logits, temps, top_ks, top_ps, min_ps, draws)
    assert bool(support[torch.arange(rows), got].all()), "drew a token the filters exclude"
    clear = margin > 1e-6
    assert int(clear.sum()) > rows * 0.9, int(clear.sum())
    assert torch.equal(got[clear], expected[clear])
    for row in range(0, rows, 7):
        alone = kernel.sample_rows(logits[row : row + 1].contiguous(), temps[row : row + 1], top_ks[row : row + 1],
                                   top_ps[row : row + 1], min_ps[row : row + 1], draws[row : row + 1])
        assert int(alone) == int(got[row])


def test_native_sampler_covers_exactly_the_filtered_support(kernel):
    """Across a fine grid of draws, a row yields every token the filters keep (with mass above the grid step)."""
    logits = torch.randn(1, 500, generator=torch.Generator().manual_seed(5)) * 3
    params = dict(temps=torch.tensor([0.9]), top_ks=torch.tensor([50]), top_ps=torch.tensor([0.8]),
                  min_ps=torch.tensor([0.01]))
    grid = (torch.arange(2000, dtype=torch.float64) + 0.5) / 2000
    tokens = {int(kernel.sample_rows(logits, params["temps"], params["top_ks"], params["top_ps"], params["min_ps"],
                                     u.view(1))) for u in grid}
    _, support, _ = _torch_sample(logits, *params.values(), grid[:1])
    probs = torch.softmax(logits / 0.9, -1)[0]
    kept = set(support[0].nonzero().squeeze(1).tolist())
    assert tokens <= kept and {t for t in kept if probs[t] > 2e-3 * probs[list(kept)].sum()} <= tokens


def test_native_rms_norm_rope_and_silu_match_pytorch(kernel):
    from lamina.engine.models.llama import rotate_half

    gen = torch.Generator().manual_seed(7)
    x, weight = torch.randn(5, 100, generator=gen) * 4, torch.randn(100, generator=gen)
    torch.testing.assert_close(kernel.rms_norm(x, weight, 1e-5), torch.nn.functional.rms_norm(x, (100,), weight, 1e-5),
                               rtol=1e-6, atol=1e-6)
    qkv = torch.randn(6, 9 * 16 + 2 * 3 * 16, generator=gen)
    q, k = qkv[:, : 9 * 16].view(6, 9, 16), qkv[:, 9 * 16 : 12 * 16].view(6, 3, 16)  # strided views, as in the model
    cos, sin = torch.randn(50, 16, generator=gen), torch.randn(50, 16, generator=gen)
    positions = torch.tensor([0, 3, 3, 49, 7, 1])
    c, s = cos[positions].unsqueeze(1), sin[positions].unsqueeze(1)
    expected_q, expected_k = q * c + rotate_half(q) * s, k * c + rotate_half(k) * s
    untouched = qkv[:, 12 * 16 :].clone()
    kernel.rope_(q, k, cos, sin, positions)
    assert torch.equal(q, expected_q) and torch.equal(k, expected_k)  # the same roundings as PyTorch's formula
    assert torch.equal(qkv[:, 12 * 16 :], untouched)
    with pytest.raises(RuntimeError, match="position beyond the rotary table"):
        kernel.rope_(q, k, cos, sin, torch.tensor([0, 1, 2, 3, 4, 50]))
    gate_up = torch.cat([torch.linspace(-100, 100, 2 * 37).view(2, 37), torch.randn(2, 37, generator=gen)], dim=1)
    gate, up = gate_up.chunk(2, dim=1)
    torch.testing.assert_close(kernel.silu_mul(gate_up.contiguous()), torch.nn.functional.silu(gate) * up,
                               rtol=1e-6, atol=1e-6)
