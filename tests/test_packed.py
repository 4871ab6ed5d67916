"""CPU fp32 linears pre-packed for oneDNN: equal to nn.Linear within fp32 rounding, and batch-invariant rows."""
from __future__ import annotations

import pytest
import torch

from lamina import LLM
from lamina.engine.models.packed import PackedLinear, packing_available

pytestmark = pytest.mark.skipif(not packing_available(), reason="this torch build has no oneDNN")


@pytest.mark.parametrize("bias", [False, True])
def test_packed_linear_matches_and_rows_do_not_depend_on_the_batch(bias):
    torch.manual_seed(0)
    linear = torch.nn.Linear(192, 320, bias=bias)
    packed = PackedLinear(linear)
    x = torch.randn(70, 192)
    with torch.inference_mode():
        full, ref = packed(x), linear(x)
        assert torch.allclose(full, ref, atol=1e-5, rtol=1e-4)
        for m in (1, 2, 3, 8, 31, 32, 33, 64):
            assert torch.equal(packed(x[:m]), full[:m])
        assert torch.equal(packed(x[40:41]), full[40:41])
        assert packed(x.view(7, 10, 192)).shape == (7, 10, 320)


def test_engine_packs_by_default_and_can_be_told_not_to(tiny_llama_dir):
    packed = LLM(str(tiny_llama_dir), num_kv_blocks=64, block_size=4)
    plain = LLM(str(tiny_llama_dir), num_kv_blocks=64, block_size=4, pack_weights=False)
    assert isinstance(packed.engine.model.layers[0].mlp.down_proj, PackedLinear)
    assert isinstance(plain.engine.model.layers[0].mlp.down_proj, torch.nn.Linear)
    hidden = torch.randn(5, packed.engine.model.config.hidden_size)
    with torch.inference_mode():
        a, b = packed.engine.model.compute_logits(hidden), plain.engine.model.compute_logits(hidden)
        x = torch.randn(5, packed.engine.model.config.hidden_size)
        c, d = packed.engine.model.layers[0].mlp(x), plain.engine.model.layers[0].mlp(x)
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-4) and torch.allclose(c, d, atol=1e-5, rtol=1e-4)
