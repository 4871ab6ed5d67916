"""CPU linears: oneDNN-packed fp32 (the default), opt-in int8 and opt-in bf16. All stay close to nn.Linear, and a row's result
never depends on the rest of its batch (which keeps seeded samples independent of their batch mates)."""
from __future__ import annotations

import pytest
import torch

from lamina import LLM, SamplingParams
from lamina.engine.models.cpu_linear import BF16Linear, Int8Linear, PackedLinear, bf16_supported, packing_available

NEEDS_BF16 = pytest.mark.skipif(not bf16_supported(), reason="CPU without avx512_bf16/amx_bf16")

KINDS = [pytest.param(PackedLinear, 1e-5, marks=pytest.mark.skipif(not packing_available(), reason="no oneDNN")),
         pytest.param(Int8Linear, 0.03), pytest.param(BF16Linear, 0.01, marks=NEEDS_BF16)]


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("kind,rel_err", KINDS)
def test_close_to_linear_and_rows_do_not_depend_on_the_batch(kind, rel_err, bias):
    torch.manual_seed(0)
    linear = torch.nn.Linear(192, 320, bias=bias)
    layer = kind(linear)
    x = torch.randn(70, 192)
    with torch.inference_mode():
        full, ref = layer(x), linear(x)
        assert float((full - ref).norm() / ref.norm()) < rel_err
        for m in (1, 2, 3, 8, 31, 32, 33, 64):
            assert torch.equal(layer(x[:m]), full[:m])
        assert torch.equal(layer(x[40:41]), full[40:41])
        assert torch.equal(layer(torch.cat([x[3:4] * 100, x[5:6]]))[1], full[5])
        assert layer(x[:60].view(6, 10, 192)).shape == (6, 10, 320)


@pytest.mark.skipif(not packing_available(), reason="no oneDNN")
def test_engine_packs_by_default_and_can_be_told_not_to(tiny_llama_dir):
    packed = LLM(str(tiny_llama_dir), num_kv_blocks=64, block_size=4)
    plain = LLM(str(tiny_llama_dir), num_kv_blocks=64, block_size=4, pack_weights=False)
    assert isinstance(packed.engine.model.layers[0].mlp.down_proj, PackedLinear)
    assert type(plain.engine.model.layers[0].mlp.down_proj) is torch.nn.Linear
    hidden = torch.randn(5, packed.engine.model.config.hidden_size)
    with torch.inference_mode():
        a, b = packed.engine.model.compute_logits(hidden), plain.engine.model.compute_logits(hidden)
        c, d = packed.engine.model.layers[0].mlp(hidden), plain.engine.model.layers[0].mlp(hidden)
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-4) and torch.allclose(c, d, atol=1e-5, rtol=1e-4)


def test_int8_engine_generates_and_is_batch_invariant(tiny_llama_dir):
    llm = LLM(str(tiny_llama_dir), num_kv_blocks=128, block_size=4, quantization="int8")
    assert isinstance(llm.engine.model.layers[0].self_attn.qkv_proj, Int8Linear)
    params = SamplingParams(temperature=0.9, seed=3, max_tokens=10, ignore_eos=True)
    alone = llm.generate("The fox", params)[0].outputs[0].token_ids
    crowd = llm.generate([f"noise {i}" for i in range(5)] + ["The fox"], [SamplingParams(max_tokens=6)] * 5 + [params])
    assert crowd[-1].outputs[0].token_ids == alone and len(alone) == 10
    assert llm.engine.num_free_blocks == llm.engine.num_total_blocks


@NEEDS_BF16
def test_bf16_engine_logits_are_close_to_fp32_and_greedy_generation_runs(tiny_llama_dir):
    exact = LLM(str(tiny_llama_dir), num_kv_blocks=128, block_size=4)
    bf16 = LLM(str(tiny_llama_dir), num_kv_blocks=128, block_size=4, quantization="bf16")
    assert isinstance(bf16.engine.model.layers[0].self_attn.qkv_proj, BF16Linear)
    assert isinstance(bf16.engine.model.lm_head, BF16Linear) and "bf16" in bf16.engine.linear_backend
    torch.manual_seed(0)
    hidden = torch.randn(7, exact.engine.model.config.hidden_size)
    with torch.inference_mode():
        for module in (lambda m: m.compute_logits, lambda m: m.layers[0].mlp):
            a, b = module(exact.engine.model)(hidden), module(bf16.engine.model)(hidden)
            assert b.dtype == torch.float32 and not torch.equal(a, b)  # it does compute in bf16
            assert float((a - b).norm() / a.norm()) < 0.01
    greedy = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    out = bf16.generate(["The fox", "Once upon"], greedy)
    assert [len(o.outputs[0].token_ids) for o in out] == [12, 12]
    assert bf16.generate("Once upon", greedy)[0].outputs[0].token_ids == out[1].outputs[0].token_ids
    assert bf16.engine.num_free_blocks == bf16.engine.num_total_blocks


def test_bf16_on_a_cpu_without_it_is_a_clear_one_line_error(tiny_llama_dir, monkeypatch):
    from lamina.engine.models import cpu_linear
    from lamina.errors import InvalidRequestError

    monkeypatch.setattr(cpu_linear, "bf16_supported", lambda: False)
    with pytest.raises(InvalidRequestError) as exc:
        LLM(str(tiny_llama_dir), num_kv_blocks=16, quantization="bf16")
    assert "quantization='bf16' needs a CPU with avx512_bf16 or amx_bf16" in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("bad", [dict(quantization="int4"), dict(quantization="bfloat16"), dict(dtype="float77")])
def test_bad_engine_options_are_clear_errors(tiny_llama_dir, bad):
    from lamina.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match=next(iter(bad))):
        LLM(str(tiny_llama_dir), num_kv_blocks=16, **bad)
