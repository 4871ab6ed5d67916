"""Lamina's forward pass and greedy decoding against transformers, the reference implementation."""
from __future__ import annotations

import pytest
import torch

from lamina import SamplingParams
from lamina.engine.config import ModelConfig
from lamina.engine.kv_cache import KVCache
from lamina.engine.models.attention import AttentionMetadata, PrefillSegment
from lamina.engine.models.llama import LlamaForCausalLM
from tests.conftest import assert_pool_full

PROMPTS = ["The capital of France is", "def fibonacci(n):\n    ", "Once upon a time, in a land far away,"]


def lamina_logits(model: LlamaForCausalLM, ids: list[int]) -> torch.Tensor:
    config = model.config
    n = len(ids)
    cache = KVCache(config.num_hidden_layers, -(-n // 16), 16, config.num_key_value_heads, config.head_dim)
    meta = AttentionMetadata(cache.k, cache.v, torch.arange(n), [PrefillSegment(0, n, n, None)], decode_start=n)
    with torch.inference_mode():
        return model.compute_logits(model(torch.tensor(ids), torch.arange(n), meta))


def build_from_hf(hf_model) -> LlamaForCausalLM:
    model = LlamaForCausalLM(ModelConfig.from_hf_dict(hf_model.config.to_dict()), 512)
    model.load_hf_weights(hf_model.state_dict())
    return model


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_random_model_logits_match_transformers(kind):
    import transformers

    torch.manual_seed(0)
    sizes = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=512)
    if kind == "llama":
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**sizes, rope_scaling={"rope_type": "llama3",
            "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}))
    else:
        hf = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**sizes))
    hf.eval()
    ids = torch.randint(0, 300, (200,)).tolist()
    with torch.inference_mode():
        ref = hf(torch.tensor([ids])).logits[0]
    got = lamina_logits(build_from_hf(hf), ids)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_real_model_logits_match_transformers(real_llm, hf_smollm2):
    for prompt in PROMPTS:
        ids = real_llm.tokenizer.encode(prompt)
        with torch.inference_mode():
            ref = hf_smollm2(torch.tensor([ids])).logits[0]
        got = lamina_logits(real_llm.engine.model, ids)
        torch.testing.assert_close(got, ref, atol=2e-3, rtol=1e-3)


def test_real_model_greedy_matches_transformers_generate(real_llm, hf_smollm2):
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    outs = real_llm.generate(PROMPTS, params)
    for prompt, out in zip(PROMPTS, outs):
        ids = real_llm.tokenizer.encode(prompt)
        with torch.inference_mode():
            ref = hf_smollm2.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False, min_new_tokens=24)
        assert out.outputs[0].token_ids == ref[0, len(ids):].tolist()
        assert out.outputs[0].finish_reason == "length"
    assert_pool_full(real_llm)
