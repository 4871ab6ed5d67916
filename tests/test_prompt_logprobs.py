"""SamplingParams.prompt_logprobs: each prompt token's logprob equals log_softmax of a full forward at the position
before it, whether the prompt is prefilled at once, in chunks, after a prefix-cache hit or after a preemption; and
max_tokens=0 scores the prompt only."""
from __future__ import annotations

import pytest
import torch

from lamina import LLM, SamplingParams
from lamina.engine.outputs import OutputKind
from lamina.errors import InvalidRequestError
from tests.conftest import assert_pool_full

PROMPT = "The quick brown fox jumps over the lazy dog. Then the fox ran into the forest and"
SCORE = SamplingParams(prompt_logprobs=3, max_tokens=0)


def reference(hf_model, ids: list[int]) -> torch.Tensor:
    """log_softmax of transformers' full forward: row p scores token p + 1."""
    with torch.inference_mode():
        return torch.log_softmax(hf_model(torch.tensor([ids])).logits[0].float(), dim=-1)


def check(prompt_logprobs, ids: list[int], ref: torch.Tensor, k: int, atol: float) -> None:
    assert len(prompt_logprobs) == len(ids) and prompt_logprobs[0] is None
    for p, entry in enumerate(prompt_logprobs[1:]):
        assert entry.token_id == ids[p + 1]
        assert entry.logprob == pytest.approx(ref[p, ids[p + 1]].item(), abs=atol)
        top = ref[p].topk(k)
        assert list(entry.top.values()) == pytest.approx(top.values.tolist(), abs=atol)
    if k:  # the top ids agree wherever the reference's values are not near-ties
        firsts = [next(iter(e.top)) for e in prompt_logprobs[1:]]
        assert sum(f == r for f, r in zip(firsts, ref[:-1].argmax(-1).tolist())) >= 0.9 * len(firsts)


@pytest.fixture(scope="module")
def hf_tiny(tiny_llama_dir):
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers.AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), dtype=torch.float32).eval()


def test_prompt_logprobs_match_a_full_forward(tiny_llama_dir, hf_tiny):
    llm = LLM(str(tiny_llama_dir), num_kv_blocks=128, block_size=4, enable_prefix_caching=False)
    out = llm.generate(PROMPT, SamplingParams(prompt_logprobs=3, max_tokens=4, temperature=0, ignore_eos=True))[0]
    ids = out.prompt_token_ids
    check(out.prompt_logprobs, ids, reference(hf_tiny, ids), 3, 1e-4)
    assert len(out.outputs[0].token_ids) == 4  # generation goes on as usual
    assert_pool_full(llm)


def test_chunked_prefill_and_the_prefix_cache_give_the_same_values(tiny_llama_dir, hf_tiny):
    ids = LLM(str(tiny_llama_dir), num_kv_blocks=16, block_size=4).tokenizer.encode(PROMPT)
    ref = reference(hf_tiny, ids)
    chunked = LLM(str(tiny_llama_dir), num_kv_blocks=128, block_size=4, max_num_batched_tokens=5)
    check(chunked.generate(ids, SCORE)[0].prompt_logprobs, ids, ref, 3, 1e-4)
    cached = LLM(str(tiny_llama_dir), num_kv_blocks=128, block_size=4)
    warm = cached.generate(ids, SamplingParams(max_tokens=2))[0]  # fills the prefix cache with this prompt
    assert cached.generate(ids, SamplingParams(max_tokens=2))[0].num_cached_tokens > 0
    again = cached.generate(ids, SCORE)[0]
    assert again.num_cached_tokens == 0  # scoring the prompt computes every position
    check(again.prompt_logprobs, ids, ref, 3, 1e-4)
    assert warm.prompt_logprobs is None  # not asked: not computed
    assert_pool_full(chunked)
    assert_pool_full(cached)


def test_preempted_requests_keep_their_prompt_logprobs(tiny_llama_dir, hf_tiny):
    small = LLM(str(tiny_llama_dir), num_kv_blocks=40, block_size=4)
    prompts = [f"{i}: {PROMPT}" for i in range(6)]
    params = SamplingParams(prompt_logprobs=0, temperature=0.8, seed=5, max_tokens=24, ignore_eos=True)
    outs = small.generate(prompts, params)
    for out in outs:
        check(out.prompt_logprobs, out.prompt_token_ids, reference(hf_tiny, out.prompt_token_ids), 0, 1e-4)
    assert_pool_full(small)


def test_max_tokens_zero_scores_the_prompt_only(tiny_llm):
    outs = tiny_llm.generate([PROMPT, "hi"], SamplingParams(prompt_logprobs=1, max_tokens=0, n=2))
    for out in outs:
        assert [(c.token_ids, c.text, c.finish_reason) for c in out.outputs] == [([], "", "length")] * 2
        assert len(out.prompt_logprobs) == len(out.prompt_token_ids)
    assert_pool_full(tiny_llm)


def test_deltas_carry_the_prompt_logprobs_once(tiny_llm):
    engine = tiny_llm.engine
    request_id = engine.add_request(PROMPT, SamplingParams(prompt_logprobs=0, max_tokens=5, ignore_eos=True),
                                    output_kind=OutputKind.DELTA)
    outs = []
    while engine.has_unfinished_requests():
        outs += [o for o in engine.step() if o.request_id == request_id]
    assert outs[0].prompt_logprobs is not None and len(outs[0].prompt_logprobs) == len(outs[0].prompt_token_ids)
    assert all(o.prompt_logprobs is None for o in outs[1:]) and len(outs) > 1


@pytest.mark.parametrize("bad", [dict(max_tokens=0), dict(prompt_logprobs=21), dict(prompt_logprobs=-1)])
def test_bad_prompt_logprobs_params(bad):
    with pytest.raises(InvalidRequestError, match="SamplingParams"):
        SamplingParams(**bad)


def test_real_model_prompt_logprobs_match_transformers(real_llm, hf_smollm2):
    for prompt in ["The capital of France is Paris.", "def fibonacci(n):\n    return n"]:
        out = real_llm.generate(prompt, SamplingParams(prompt_logprobs=2, max_tokens=0))[0]
        ids = out.prompt_token_ids
        check(out.prompt_logprobs, ids, reference(hf_smollm2, ids), 2, 2e-3)
    assert_pool_full(real_llm)
