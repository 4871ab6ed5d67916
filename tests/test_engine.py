"""Engine behaviour: sharing, forking, chunking and preemption change nothing in the outputs; seeds; no leaks."""
from __future__ import annotations

import pytest

from lamina import LLM, SamplingParams
from lamina.engine.outputs import DeltaJoiner, OutputKind
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


def _drain(engine, request_ids: list[str], max_steps: int = 5000) -> dict[str, list]:
    """Step until every request finishes (at most max_steps): each request's outputs, in order."""
    seen: dict[str, list] = {r: [] for r in request_ids}
    for _ in range(max_steps):
        if not engine.has_unfinished_requests():
            break
        for out in engine.step():
            seen[out.request_id].append(out)
    assert not engine.has_unfinished_requests(), "the engine stalled"
    return seen


def _join(deltas: list) -> list:
    joiner = DeltaJoiner()
    for out in deltas:
        for o in out.outputs:
            joiner.add(o)
    return joiner.outputs()


def test_deltas_join_to_the_final_output(real_llm):
    params = SamplingParams(n=4, temperature=0.8, seed=21, max_tokens=40, stop=[".", " and"], logprobs=2)
    prompt = "Tell me about the sea"
    (final,) = real_llm.generate(prompt, params)
    request_id = real_llm.engine.add_request(prompt, params, output_kind=OutputKind.DELTA)
    deltas = _drain(real_llm.engine, [request_id])[request_id]
    assert deltas[-1].finished and not any(d.finished for d in deltas[:-1])
    joined = _join(deltas)
    assert [(o.text, o.token_ids, o.finish_reason, o.stop_reason) for o in joined] == \
        [(o.text, o.token_ids, o.finish_reason, o.stop_reason) for o in final.outputs]
    assert [[lp.logprob for lp in o.logprobs] for o in joined] == [[lp.logprob for lp in o.logprobs] for o in final.outputs]
    assert any(o.finish_reason == "stop" for o in final.outputs)  # the held-back text was exercised
    streamed = [o.text for d in deltas for o in d.outputs]
    assert not any(stop in text for text in streamed for stop in params.stop)


@pytest.mark.parametrize("stops", [["lo", "ell"], ["ell", "lo"]])
def test_earliest_stop_string_wins_on_the_real_model(real_llm, stops):
    params = SamplingParams(max_tokens=1, temperature=0, stop=stops)
    out = real_llm.generate("hello hello hello hello hello hello", params)[0].outputs[0]
    assert real_llm.tokenizer.decode(out.token_ids) == " hello"
    assert (out.text, out.finish_reason, out.stop_reason) == (" h", "stop", "ell")
    request_id = real_llm.engine.add_request("hello hello hello hello hello hello", params, output_kind=OutputKind.DELTA)
    assert [o.text for o in _join(_drain(real_llm.engine, [request_id])[request_id])] == [" h"]


def test_a_sample_that_outgrows_the_kv_pool_ends_with_length_and_others_keep_flowing(tiny_llama_dir):
    small = LLM(str(tiny_llama_dir), num_kv_blocks=16, block_size=4)  # 64 tokens in all
    engine = small.engine
    long_id = engine.add_request(PROMPT, SamplingParams(max_tokens=300, ignore_eos=True, seed=1))
    short_ids = [engine.add_request(f"{i} short", SamplingParams(max_tokens=4, ignore_eos=True, seed=i)) for i in range(3)]
    finals = {r: outs[-1] for r, outs in _drain(engine, [long_id, *short_ids]).items()}
    (long,) = finals[long_id].outputs
    assert long.finish_reason == "length" and len(finals[long_id].prompt_token_ids) + len(long.token_ids) == 64
    assert all(finals[r].outputs[0].finish_reason == "length" and len(finals[r].outputs[0].token_ids) == 4
               for r in short_ids)
    assert_pool_full(small)


def test_long_prompts_in_small_chunks_on_a_small_pool_match_plain(tiny_llama_dir, plain):
    small = LLM(str(tiny_llama_dir), num_kv_blocks=16, block_size=4, max_num_batched_tokens=6)
    ids = small.tokenizer.encode(PROMPT * 4)
    prompts = [ids[:n] for n in (37, 31, 25, 20)]  # 64 tokens fit in the pool; 37 = 6 * 6 + 1: the prompt's last
    params = SamplingParams(n=2, temperature=0.8, seed=3, max_tokens=32, ignore_eos=True)  # token runs as a decode
    request_ids = [small.engine.add_request(p, params) for p in prompts]
    finals = [outs[-1] for outs in _drain(small.engine, request_ids).values()]
    assert [len(f.outputs) for f in finals] == [2, 2, 2, 2]
    assert [[len(f.prompt_token_ids) + len(o.token_ids) for o in f.outputs] for f in finals] == \
        [[64, 64], [63, 63], [57, 57], [52, 52]]  # the 37-token prompt's samples end at the pool's 64 tokens
    assert tokens(finals) == [t[: 64 - len(p)] for p, t in zip([p for p in prompts for _ in range(2)],
                                                                tokens(plain.generate(prompts, params)))]
    assert_pool_full(small)


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
