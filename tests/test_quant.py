"""The optional int8 CPU path: close to fp32, and a row's result never depends on the rest of its batch."""
from __future__ import annotations

import torch

from lamina import LLM, SamplingParams
from lamina.engine.models.quant import Int8Linear


def test_int8_linear_is_close_and_batch_invariant():
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 80, bias=True)
    q = Int8Linear(linear)
    x = torch.randn(16, 96)
    with torch.inference_mode():
        ref, got = linear(x), q(x)
        assert ((got - ref).norm() / ref.norm()) < 0.03
        assert torch.equal(q(x[3:4]), got[3:4])
        assert torch.equal(q(torch.cat([x[3:4] * 100, x[5:6]]))[1], got[5])


def test_int8_engine_generates_and_is_batch_invariant(tiny_llama_dir):
    llm = LLM(str(tiny_llama_dir), num_kv_blocks=128, block_size=4, quantization="int8")
    params = SamplingParams(temperature=0.9, seed=3, max_tokens=10, ignore_eos=True)
    alone = llm.generate("The fox", params)[0].outputs[0].token_ids
    crowd = llm.generate([f"noise {i}" for i in range(5)] + ["The fox"], [SamplingParams(max_tokens=6)] * 5 + [params])
    assert crowd[-1].outputs[0].token_ids == alone and len(alone) == 10
    assert llm.engine.num_free_blocks == llm.engine.num_total_blocks
