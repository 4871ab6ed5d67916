"""Engine behaviour: sharing, forking, chunking and preemption change nothing in the outputs; seeds; no leaks."""
from __future__ import annotations

import pytest

from lamina import LLM, SamplingParams
from lamina.errors import InvalidRequestError
from tests.conftest import assert_pool_full

PROMPT = "The quick brown fox jumps over the lazy dog. Then the fox ran into the forest and"
GREEDY = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)


def tokens(outs) -> list[list[int]]:
    return [c.token_ids for o in outs for c in o.outputs]


@pytest.fixture(scope="module")
def plain(tiny_llama_dir):
    """A reference engine: no prefix caching, one big step per prefill, a pool that never runs out."""
    return LLM(str(tiny_llama_dir), num_kv_blocks=512, block_size=4, enable_prefix_caching=False)


@pytest.fixture(autouse=True)
def no_leaks(request):
    yield
    for name in ("tiny_llm", "plain", "real_llm"):
        if name in request.fixturenames:
            assert_pool_full(request.getfixturevalue(name))


def test_prefix_cache_hit_gives_identical_tokens(tiny_llm, plain):
    ref = tokens(plain.generate(PROMPT, GREEDY))
    first = tiny_llm.generate(PROMPT, GREEDY)
    second = tiny_llm.generate(PROMPT, GREEDY)
    assert tokens(first) == ref and tokens(second) == ref
    prompt_len = len(second[0].prompt_token_ids)
    assert second[0].num_cached_tokens == (prompt_len - 1) // 4 * 4 > 0


def test_shared_prefix_across_different_prompts(tiny_llm, plain):
    prompts = [PROMPT + " then", PROMPT + " finally it slept"]
    assert tokens(tiny_llm.generate(prompts, GREEDY)) == tokens(plain.generate(prompts, GREEDY))


def test_fork_shares_prompt_blocks_and_matches_separate_requests(tiny_llm, plain):
    params = SamplingParams(n=6, temperature=0.9, seed=11, max_tokens=12, ignore_eos=True)
    forked = tiny_llm.generate(PROMPT, params)[0]
    assert [c.index for c in forked.outputs] == list(range(6))
    assert len({tuple(c.token_ids) for c in forked.outputs}) > 1, "samples should differ"
    again = plain.generate(PROMPT, params)[0]
    assert tokens([forked]) == tokens([again])


def test_fork_uses_one_copy_of_the_prompt(tiny_llm):
    engine = tiny_llm.engine
    prompt_ids = tiny_llm.tokenizer.encode(PROMPT)
    request_id = engine.add_request(prompt_ids, SamplingParams(n=8, temperature=1.0, seed=1, max_tokens=4))
    engine.step()  # prefill + fork
    request = engine.requests[request_id]
    assert len(request.seqs) == 8
    tables = [s.block_table for s in request.seqs]
    full = len(prompt_ids) // 4
    assert all(t[:full] == tables[0][:full] for t in tables)
    used_before_decode = engine.num_total_blocks - engine.num_free_blocks
    assert used_before_decode == -(-len(prompt_ids) // 4)
    while engine.has_unfinished_requests():
        engine.step()


def test_chunked_prefill_matches_plain(tiny_llama_dir, plain):
    chunked = LLM(str(tiny_llama_dir), num_kv_blocks=128, block_size=4, max_num_batched_tokens=7)
    prompts = [PROMPT, PROMPT[::-1], "short"]
    assert tokens(chunked.generate(prompts, GREEDY)) == tokens(plain.generate(prompts, GREEDY))
    assert_pool_full(chunked)


def test_preemption_matches_plain(tiny_llama_dir, plain):
    prompts = [f"{i}: {PROMPT}" for i in range(6)]
    params = SamplingParams(temperature=0.8, seed=5, max_tokens=24, ignore_eos=True)
    small = LLM(str(tiny_llama_dir), num_kv_blocks=40, block_size=4)
    outs = small.generate(prompts, params)
    assert tokens(outs) == tokens(plain.generate(prompts, params))
    assert_pool_full(small)


def test_preemption_happens_and_every_request_finishes(tiny_llama_dir):
    small = LLM(str(tiny_llama_dir), num_kv_blocks=24, block_size=4)
    engine = small.engine
    ids = [engine.add_request(f"{i} {PROMPT}", SamplingParams(max_tokens=30, ignore_eos=True, seed=i)) for i in range(5)]
    seqs = [engine.requests[i].seqs[0] for i in ids]
    finished = set()
    for _ in range(2000):
        if not engine.has_unfinished_requests():
            break
        finished |= {o.request_id for o in engine.step() if o.finished}
    assert finished == set(ids)
    assert any(s.num_preemptions > 0 for s in seqs), "the pool was small enough to force preemption"
    assert all(s.num_output_tokens == 30 for s in seqs)
    assert_pool_full(small)


def test_seeded_sample_independent_of_batch(real_llm):
    params = SamplingParams(temperature=1.0, top_p=0.95, seed=1234, max_tokens=16, ignore_eos=True)
    alone = real_llm.generate("Write a short poem about the sea.", params)[0].outputs[0].token_ids
    others = [f"Question {i}: name a colour." for i in range(31)]
    crowd = real_llm.generate(others[:15] + ["Write a short poem about the sea."] + others[15:],
                              [SamplingParams(temperature=1.0, seed=i, max_tokens=16) for i in range(15)]
                              + [params] + [SamplingParams(temperature=0.0, max_tokens=8) for _ in range(16)])
    assert crowd[15].outputs[0].token_ids == alone  # drawn among sampled and greedy batch mates
    greedy_alone = real_llm.generate(others[15], SamplingParams(temperature=0.0, max_tokens=8))[0]
    assert crowd[16].outputs[0].token_ids == greedy_alone.outputs[0].token_ids


def test_n_with_seed_is_reproducible(real_llm):
    params = SamplingParams(n=8, temperature=0.8, seed=7, max_tokens=10)
    a = real_llm.generate("List three fruits:", params)[0]
    b = real_llm.generate("List three fruits:", params)[0]
    assert tokens([a]) == tokens([b])
    assert len(a.outputs) == 8
    c = real_llm.generate("List three fruits:", params.replace(seed=8))[0]
    assert tokens([c]) != tokens([a])


def test_unseeded_samples_differ(tiny_llm):
    params = SamplingParams(temperature=1.0, max_tokens=12, ignore_eos=True)
    assert tokens(tiny_llm.generate(PROMPT, params)) != tokens(tiny_llm.generate(PROMPT, params))


def test_stop_strings_tokens_and_lengths(real_llm):
    base = real_llm.generate("Count: 1, 2, 3, 4,", SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))[0]
    text = base.outputs[0].text
    assert base.outputs[0].finish_reason == "length" and len(base.outputs[0].token_ids) == 12
    stop = text.strip()[2:4]
    cut = real_llm.generate("Count: 1, 2, 3, 4,", SamplingParams(temperature=0, max_tokens=12, stop=[stop]))[0]
    assert cut.outputs[0].finish_reason == "stop" and cut.outputs[0].stop_reason == stop
    assert cut.outputs[0].text == text[: text.index(stop)]
    kept = real_llm.generate("Count: 1, 2, 3, 4,", SamplingParams(temperature=0, max_tokens=12, stop=[stop],
                                                                  include_stop_str_in_output=True))[0]
    assert kept.outputs[0].text == text[: text.index(stop) + len(stop)]
    first = base.outputs[0].token_ids[3]
    by_id = real_llm.generate("Count: 1, 2, 3, 4,", SamplingParams(temperature=0, max_tokens=12, stop_token_ids=[first]))[0]
    assert by_id.outputs[0].token_ids == base.outputs[0].token_ids[: base.outputs[0].token_ids.index(first) + 1]
    assert by_id.outputs[0].stop_reason == first


def test_chat_stops_at_end_of_turn(real_llm):
    out = real_llm.chat([{"role": "user", "content": "Say hello."}], SamplingParams(temperature=0, max_tokens=64))[0]
    completion = out.outputs[0]
    assert completion.finish_reason == "stop"
    assert completion.token_ids[-1] in real_llm.tokenizer.eos_token_ids
    assert "<|im_end|>" not in completion.text and completion.text.strip()


def test_logprobs(real_llm):
    out = real_llm.generate("The capital of France is", SamplingParams(temperature=0, max_tokens=5, logprobs=3))[0]
    completion = out.outputs[0]
    assert len(completion.logprobs) == 5
    for token_id, lp in zip(completion.token_ids, completion.logprobs):
        assert lp.token_id == token_id and lp.logprob <= 0
        assert len(lp.top) == 3 and max(lp.top, key=lp.top.get) == token_id  # greedy picks the top token
        assert abs(lp.top[token_id] - lp.logprob) < 1e-5


def test_repetition_penalty_reduces_repeats(real_llm):
    prompt = "ha ha ha ha ha ha ha ha ha ha"
    plain_out = real_llm.generate(prompt, SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))[0]
    penal = real_llm.generate(prompt, SamplingParams(temperature=0, max_tokens=20, ignore_eos=True,
                                                     repetition_penalty=1.5))[0]
    assert len(set(penal.outputs[0].token_ids)) > len(set(plain_out.outputs[0].token_ids))


def test_generation_stops_at_context_end(tiny_llama_dir):
    short = LLM(str(tiny_llama_dir), num_kv_blocks=64, block_size=4, max_model_len=24)
    prompt = short.tokenizer.encode(PROMPT * 2)[:20]
    out = short.generate(prompt, SamplingParams(max_tokens=50, ignore_eos=True))[0]
    assert out.outputs[0].finish_reason == "length" and len(out.outputs[0].token_ids) == 24 - 20
    with pytest.raises(InvalidRequestError, match="context"):
        short.generate(short.tokenizer.encode(PROMPT * 3), SamplingParams(max_tokens=4))
    assert_pool_full(short)


@pytest.mark.parametrize("bad", [dict(max_tokens=0), dict(max_tokens=-3), dict(temperature=-1), dict(top_p=0),
                                 dict(n=0), dict(logprobs=99), dict(colour="red")])
def test_bad_sampling_params(bad):
    with pytest.raises(InvalidRequestError):
        SamplingParams(**bad)


def test_bad_engine_inputs(tiny_llm, tiny_llama_dir):
    with pytest.raises(InvalidRequestError, match="empty"):
        tiny_llm.generate("", GREEDY)
    with pytest.raises(InvalidRequestError, match="vocabulary"):
        tiny_llm.generate([10**9], GREEDY)
    with pytest.raises(InvalidRequestError, match="unknown engine option"):
        LLM(str(tiny_llama_dir), kv_blocks=3)
