"""CPU linears: oneDNN-packed fp32 (the default) and opt-in int8. Both stay close to nn.Linear, and a row's result
never depends on the rest of its batch (which keeps seeded samples independent of their batch mates)."""
from __future__ import annotations

import pytest
import torch

from lamina import LLM, SamplingParams
from lamina.engine.models.cpu_linear import Int8Linear, PackedLinear, packing_available

KINDS = [pytest.param(PackedLinear, 1e-5, marks=pytest.mark.skipif(not packing_available(), reason="no oneDNN")),
         pytest.param(Int8Linear, 0.03)]


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


@pytest.mark.parametrize("bad", [dict(quantization="int4"), dict(dtype="float77")])
def test_bad_engine_options_are_clear_errors(tiny_llama_dir, bad):
    from lamina.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match=next(iter(bad))):
        LLM(str(tiny_llama_dir), num_kv_blocks=16, **bad)
