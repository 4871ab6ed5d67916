"""Native CPU kernels, each variant this CPU runs (avx2, avx512). The block-quantized GEMM multiplies exactly the
dequantized weights (Q4_0/Q4_1/Q8_0 and the K-quants Q4_K/Q5_K/Q6_K), matches fp32, keeps rows batch-invariant and
gives bit-identical results in every variant; the engine uses it for a GGUF's quantized linears with unchanged
outputs. Paged decode attention matches the PyTorch path over ragged block tables, per sequence and
batch-invariantly. Dispatch picks the best variant and falls back when one cannot be built."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q
from gguf import quants

from lamina import LLM, SamplingParams
from lamina.engine import kernels as kernel_builds
from lamina.engine.kernels import cpu_variants, kernels_for
from lamina.engine.loader.types import QuantizedWeight
from lamina.engine.models.attention import AttentionMetadata, _decode
from lamina.engine.models.block_quant import BlockQuantLinear, native_parts
from tests.conftest import assert_pool_full
from tests.test_loader import byte_vocab, random_hf_weights, write_gguf


VARIANTS = ["avx2", "avx512"]
QTYPES = [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q8_0, Q.Q4_K, Q.Q5_K, Q.Q6_K]
K_QUANTS = (Q.Q4_K, Q.Q5_K, Q.Q6_K)


def variant(isa: str):
    if isa not in cpu_variants():
        pytest.skip(f"this CPU does not run the {isa} kernels")
    module = kernels_for(isa)
    assert module is not None and module.isa == isa, f"the {isa} kernels failed to build: {kernel_builds._failures.get(isa)}"
    return module


@pytest.fixture(scope="module", params=VARIANTS)
def kernel(request):
    return variant(request.param)


def random_k_quant_rows(qtype: Q, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """gguf writes no K-quants: random blocks (codes, packed scales and mins) with sane fp16 super-block scales."""
    block, size = GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, (shape[0], shape[1] // block, size), dtype=np.uint8)
    halves = rng.uniform(1e-4, 1e-3, (shape[0], shape[1] // block, 2)).astype(np.float16).view(np.uint8)
    at = size - 2 if qtype == Q.Q6_K else 0  # d (then dmin) lead a Q4_K/Q5_K block, d ends a Q6_K block
    blocks[..., at : at + (2 if qtype == Q.Q6_K else 4)] = halves[..., : 2 if qtype == Q.Q6_K else 4]
    return blocks.reshape(shape[0], -1)


def quantized(qtype: Q, shape: tuple[int, int], seed: int = 0) -> tuple[QuantizedWeight, torch.Tensor]:
    """Random weights stored as `qtype` blocks, and their reference dequantization."""
    rng = np.random.default_rng(seed)
    if qtype in K_QUANTS:
        rows = random_k_quant_rows(qtype, shape, rng)
    else:
        rows = quants.quantize(rng.standard_normal(shape).astype(np.float32), qtype)
    return QuantizedWeight(qtype, rows, shape), torch.from_numpy(quants.dequantize(rows, qtype).astype(np.float32))


def width_for(qtype: Q) -> int:
    return 512 if qtype in K_QUANTS else 96  # two super-blocks of 256, or three blocks of 32


@pytest.mark.parametrize("qtype", QTYPES, ids=lambda q: q.name)
def test_kernel_multiplies_exactly_the_dequantized_weights(kernel, qtype):
    k = width_for(qtype)
    weight, reference = quantized(qtype, (40, k))  # 40 outputs: two full panels and a partial one
    linear = BlockQuantLinear([weight], None, kernel)
    assert torch.equal(linear(torch.eye(k)).T, reference)  # one-hot rows pick each weight out untouched


@pytest.mark.parametrize("qtype", QTYPES, ids=lambda q: q.name)
@pytest.mark.parametrize("rows", [1, 5, 6, 7, 13, 32, 33])
def test_kernel_matches_fp32_linear_and_rows_are_batch_invariant(kernel, qtype, rows):
    k = 256 if qtype in K_QUANTS else 128
    weight, reference = quantized(qtype, (50, k), seed=rows)
    bias = torch.randn(50)
    linear = BlockQuantLinear([weight], bias, kernel)
    x = torch.randn(rows, k)
    out = linear(x)
    expected = (x.double() @ reference.double().T + bias.double()).float()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-4)
    for row in range(rows):
        assert torch.equal(linear(x[row : row + 1])[0], out[row]), f"row {row} changed with its batch mates"
    assert linear(x.view(1, rows, k)).shape == (1, rows, 50)


@pytest.mark.parametrize("qtype", QTYPES, ids=lambda q: q.name)
def test_every_variant_gives_bit_identical_rows(qtype):
    """The AVX-512 kernel does the AVX2 kernel's arithmetic in wider vectors: the same bits for every batch size."""
    modules = [variant(isa) for isa in VARIANTS]
    k = width_for(qtype)
    weight, _ = quantized(qtype, (72, k), seed=3)  # 4.5 panels: whole two-panel units, a single and a partial panel
    bias = torch.randn(72)
    linears = [BlockQuantLinear([weight], bias, m) for m in modules]
    for rows in (1, 3, 4, 5, 12, 13, 25, 40):
        x = torch.randn(rows, k)
        first, *others = [linear(x) for linear in linears]
        assert all(torch.equal(first, other) for other in others), f"{rows} rows"


@pytest.mark.parametrize("types", [(Q.Q4_1, Q.Q4_1), (Q.Q4_1, Q.Q8_0), (Q.Q4_K, Q.Q6_K), (Q.Q5_K, Q.Q4_0), (Q.Q5_0, Q.Q8_0)],
                         ids=lambda t: "+".join(q.name for q in t))
def test_fused_parts_stack_along_outputs(kernel, types):
    """Parts of different formats share one layout (8-bit codes, the finer scale groups) with the same values."""
    k = 256 if any(q in K_QUANTS for q in types) else 64
    (q, q_ref), (v, v_ref) = quantized(types[0], (24, k), 1), quantized(types[1], (8, k), 2)
    fused = BlockQuantLinear([q, v], None, kernel)
    assert fused.out_features == 32
    assert torch.equal(fused(torch.eye(k)).T, torch.cat([q_ref, v_ref]))


def test_native_parts_refuses_what_the_kernel_cannot_run():
    q41, _ = quantized(Q.Q4_1, (16, 64))
    q80, _ = quantized(Q.Q8_0, (16, 64))
    q40, _ = quantized(Q.Q4_0, (16, 64))
    f16 = QuantizedWeight(Q.F16, np.zeros((16, 128), np.uint8), (16, 64))
    store = {"a": q41, "b": q80, "c": q40, "d": f16}
    q4k_wide, _ = quantized(Q.Q4_K, (16, 256))
    q4k_narrow = QuantizedWeight(Q.Q4_K, np.zeros((16, 144 // 2), np.uint8), (16, 128))  # not whole super-blocks
    store = {"a": q41, "b": q80, "c": q40, "d": f16, "e": q4k_wide, "f": q4k_narrow}
    assert native_parts(store, ["a"]) == [q41]
    assert native_parts(store, ["b", "c"]) == [q80, q40]
    assert native_parts(store, ["a", "b"]) == [q41, q80]  # mixed formats run as 8-bit codes
    assert native_parts(store, ["e"]) == [q4k_wide]
    assert native_parts(store, ["f"]) is None
    assert native_parts(store, ["a", "e"]) is None  # different in_features
    assert native_parts(store, ["d"]) is None
    assert native_parts(store, ["a", "missing"]) is None


@pytest.fixture
def fresh_dispatch(monkeypatch):
    """Dispatch decided anew, keeping the variants already built."""
    monkeypatch.setattr(kernel_builds, "_state", {})
    monkeypatch.setattr(kernel_builds, "_failures", dict(kernel_builds._failures))
    monkeypatch.delenv("LAMINA_KERNEL_ISA", raising=False)
    return kernel_builds


def test_disabled_by_environment_says_why(fresh_dispatch, monkeypatch):
    monkeypatch.setenv("LAMINA_NATIVE_KERNELS", "0")
    assert fresh_dispatch.native_kernels() is None and fresh_dispatch.isa() is None
    assert "LAMINA_NATIVE_KERNELS=0" in fresh_dispatch.unavailable_reason()


def test_dispatch_picks_the_best_variant_the_cpu_runs_or_the_one_asked_for(fresh_dispatch, monkeypatch):
    runnable = cpu_variants()
    if not runnable:
        pytest.skip("no variant runs on this CPU")
    assert fresh_dispatch.isa() == runnable[0]
    monkeypatch.setattr(fresh_dispatch, "_state", {})
    monkeypatch.setenv("LAMINA_KERNEL_ISA", runnable[-1])
    assert fresh_dispatch.isa() == runnable[-1]
    monkeypatch.setattr(fresh_dispatch, "_state", {})
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")  # a CPU without AVX-512
    monkeypatch.setenv("LAMINA_KERNEL_ISA", "avx512")
    assert fresh_dispatch.cpu_variants() == ["avx2"] and fresh_dispatch.isa() == "avx2"
    monkeypatch.setattr(fresh_dispatch, "_state", {})
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    assert fresh_dispatch.native_kernels() is None and "lacks AVX2" in fresh_dispatch.unavailable_reason()


def test_dispatch_falls_back_when_a_variant_does_not_build(fresh_dispatch, monkeypatch, capsys):
    runnable = cpu_variants()
    if not runnable:
        pytest.skip("no variant runs on this CPU")
    best = runnable[0]
    monkeypatch.setitem(fresh_dispatch.ISA_FLAGS, best, fresh_dispatch.ISA_FLAGS[best] + ["-mno-such-instruction-set"])
    monkeypatch.setitem(fresh_dispatch._variants, best, fresh_dispatch._build(best))  # a real, failing build
    assert fresh_dispatch._variants[best] is None and best in fresh_dispatch._failures[best]
    module = fresh_dispatch.native_kernels()
    if len(runnable) > 1:
        assert module is not None and module.isa == runnable[1]
        assert f"{best} kernels unavailable" in capsys.readouterr().err
    else:
        assert module is None and "failed" in fresh_dispatch.unavailable_reason()


def _block_typed(name: str, array: np.ndarray) -> Q:
    if array.ndim == 1:
        return Q.F32
    return Q.Q8_0 if "embed" in name or "lm_head" in name or "down_proj" in name else Q.Q4_1


@pytest.fixture
def engine_kernel(kernel, monkeypatch, tmp_path):
    """Engines started in this test use `kernel`'s variant, and a choice table of their own."""
    monkeypatch.setenv("LAMINA_KERNEL_ISA", kernel.isa)
    monkeypatch.setenv("LAMINA_LINEAR_CHOICES", str(tmp_path / "choices.json"))
    monkeypatch.setattr(kernel_builds, "_state", {})
    return kernel


def _generations_agree(native: LLM, other: LLM) -> None:
    """Greedy tokens equal and logprobs close to `other`'s; a seeded sample is the same alone or in a batch."""
    prompts = ["the the", "he the t"]
    greedy = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=3)
    for a, b in zip(native.generate(prompts, greedy), other.generate(prompts, greedy)):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        for x, y in zip(a.outputs[0].logprobs, b.outputs[0].logprobs):
            assert x.logprob == pytest.approx(y.logprob, abs=1e-4)
    seeded = SamplingParams(n=4, temperature=1.0, seed=3, max_tokens=10, ignore_eos=True)
    alone = native.generate(["the the"], seeded)[0]
    crowded = native.generate(["he the t", "the the", "t he"], seeded)[1]
    assert [c.token_ids for c in alone.outputs] == [c.token_ids for c in crowded.outputs]
    assert_pool_full(native)


@pytest.mark.parametrize("arch, tied, bias", [("llama", False, False), ("qwen2", True, True)])
def test_engine_on_block_quantized_gguf_equals_fp32_path(engine_kernel, tmp_path, monkeypatch, arch, tied, bias):
    monkeypatch.setenv("LAMINA_LINEAR_CHOICE", "native")
    weights = random_hf_weights(len(byte_vocab()), tied, bias)
    path = write_gguf(tmp_path / f"{arch}.gguf", arch, weights, permute=arch == "llama", types=_block_typed)
    native = LLM(str(path), num_kv_blocks=64, block_size=4)
    fp32 = LLM(str(path), num_kv_blocks=64, block_size=4, native_kernels=False)
    assert native.engine.kernels.isa == engine_kernel.isa
    assert native.engine.linear_backend == f"linears: 9 native ({engine_kernel.isa}) from the file's quantized blocks"
    assert fp32.engine.linear_backend == "linears: 9 fp32 packed for oneDNN"
    _generations_agree(native, fp32)


def test_engine_times_each_shape_once_and_keeps_its_faster_kind(engine_kernel, tmp_path, monkeypatch):
    """Per shape one kind for every batch size, from timings kept per machine: a mix of native and oneDNN linears
    still equals the fp32 path, and a seeded sample stays independent of its batch mates."""
    from lamina.engine.models import linear_choice

    timed = []
    def fake_ratio(native, onednn, in_features):  # oneDNN "wins" the down projection (the only one with K = 96)
        timed.append(in_features)
        return (1.5, 1.2) if in_features == 96 else (0.5, 0.3)  # (geometric mean, one row) of native / oneDNN
    monkeypatch.setattr(linear_choice, "time_ratio", fake_ratio)
    path = write_gguf(tmp_path / "m.gguf", "llama", random_hf_weights(len(byte_vocab()), False, False), permute=True,
                      types=_block_typed)
    mixed = LLM(str(path), num_kv_blocks=64, block_size=4)
    assert mixed.engine.linear_backend == (f"linears: 7 native ({engine_kernel.isa}) from the file's quantized blocks; "
                                           "2 fp32 packed for oneDNN")
    assert sorted(timed) == [64, 64, 64, 64, 96]  # qkv, o, gate_up, head; down: once per shape, not per layer
    table = json.loads((tmp_path / "choices.json").read_text())
    assert list(table.values()) == [{"Q4_1+Q4_1+Q4_1 128x64": "native", "Q4_1 64x64": "native",
                                     "Q4_1+Q4_1 192x64": "native", "Q8_0 64x96": "onednn",
                                     f"Q8_0 {len(byte_vocab())}x64": "native"}]
    monkeypatch.setattr(linear_choice, "time_ratio", None)  # the table answers now: nothing is timed again
    again = LLM(str(path), num_kv_blocks=64, block_size=4)
    assert again.engine.linear_backend == mixed.engine.linear_backend
    _generations_agree(mixed, LLM(str(path), num_kv_blocks=64, block_size=4, native_kernels=False))
    monkeypatch.setenv("LAMINA_LINEAR_CHOICE", "onednn")
    onednn_only = LLM(str(path), num_kv_blocks=64, block_size=4).engine.linear_backend
    assert onednn_only == "linears: 9 fp32 packed for oneDNN"
    monkeypatch.setenv("LAMINA_LINEAR_CHOICE", "fastest")
    with pytest.raises(ValueError, match="LAMINA_LINEAR_CHOICE='fastest'"):
        LLM(str(path), num_kv_blocks=64, block_size=4)


def test_timing_runs_both_kinds_interleaved_on_every_batch_size():
    from lamina.engine.models.linear_choice import BATCHES, ROUNDS, time_ratio

    calls = []
    mean, single_row = time_ratio(lambda x: calls.append(("native", tuple(x.shape))),
                                  lambda x: calls.append(("onednn", tuple(x.shape))), 8)
    expected = [(kind, (rows, 8)) for rows in BATCHES for _ in range(ROUNDS + 1) for kind in ("native", "onednn")]
    assert calls == expected and mean > 0 and single_row > 0


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
    return _decode(q, k_cache, v_cache, meta, scale, None)


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


@pytest.mark.parametrize("ratios, kind", [((1.5, 1.2), "onednn"), ((1.5, 0.5), "native"), ((1.05, 1.2), "native"),
                                          ((0.8, 0.9), "native")])
def test_onednn_only_when_clearly_faster_and_not_losing_the_single_row(tmp_path, monkeypatch, ratios, kind):
    """(geometric mean, one row) of native / oneDNN time: oneDNN must win overall by the margin without native being
    clearly faster on one row (a single stream's decode)."""
    from types import SimpleNamespace

    from lamina.engine.models import linear_choice

    monkeypatch.setenv("LAMINA_LINEAR_CHOICES", str(tmp_path / "choices.json"))
    monkeypatch.setattr(linear_choice, "time_ratio", lambda native, onednn, in_features: ratios)
    table = linear_choice.ChoiceTable(SimpleNamespace(__name__="lamina_kernels_test"))
    part = SimpleNamespace(qtype=SimpleNamespace(name="Q4_1"), shape=(64, 32))
    assert table.native_is_faster([part], None, lambda: None) == (kind == "native")
    assert table.choices == {"Q4_1 64x32": kind}


def test_a_stale_build_lock_is_removed_and_a_fresh_one_kept(tmp_path):
    import os

    from lamina.engine.kernels import STALE_LOCK_S, clear_stale_lock

    lock = tmp_path / "lock"
    lock.write_text("")
    assert not clear_stale_lock(tmp_path) and lock.exists()  # may be a build in progress
    old = lock.stat().st_mtime - STALE_LOCK_S - 1
    os.utime(lock, (old, old))
    assert clear_stale_lock(tmp_path) and not lock.exists()
    assert not clear_stale_lock(tmp_path)  # nothing left to remove
