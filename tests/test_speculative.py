"""Speculative decoding by prompt lookup: greedy output is plain greedy output token for token, sampled output keeps
plain sampling's distribution, rejected drafts give their KV blocks back, and the option is checked like any field."""
from __future__ import annotations

from collections import Counter

import pytest
import torch

from lamina import LLM, SamplingParams
from lamina.engine import speculative
from lamina.engine.outputs import DeltaJoiner, OutputKind
from lamina.engine.request import make_generator
from lamina.engine.sequence import Sequence
from lamina.errors import InvalidRequestError
from tests.conftest import assert_pool_full

PROMPT = "The quick brown fox jumps over the lazy dog. Then the fox ran into the forest and"
SPEC = dict(num_speculative_tokens=4, prompt_lookup_min=1)


@pytest.fixture(scope="module")
def llm(tiny_llama_dir):
    return LLM(str(tiny_llama_dir), num_kv_blocks=1024, block_size=4, num_threads=1)


@pytest.fixture(autouse=True)
def no_leaks(request):
    yield
    for name in ("llm", "real_llm"):
        if name in request.fixturenames:
            assert_pool_full(request.getfixturevalue(name))


@pytest.fixture
def oracle(monkeypatch):
    """Drafts from a fixed continuation (`oracle.tokens`), wrong from draft `oracle.wrong_at` on: a proposer whose
    drafts the model mostly accepts, then rejects. Drafts stay a function of the sequence's own tokens."""
    class Oracle:
        tokens: list[int] = []
        prompt_len = 0
        wrong_at = 10**9

        def propose(self, index, tokens, k):
            done = len(tokens) - self.prompt_len
            drafts = list(self.tokens[done : done + k])
            return [t if done + i < self.wrong_at else (t + 1) % 1000 for i, t in enumerate(drafts)]

    state = Oracle()
    monkeypatch.setattr(speculative.NgramIndex, "propose", lambda index, tokens, k: state.propose(index, tokens, k))
    return state


def test_ngram_index_proposes_what_followed_the_latest_longest_match():
    index = speculative.NgramIndex(1, 3)
    tokens = [1, 2, 3, 9, 1, 2, 3, 7, 8, 5, 2, 3]
    assert index.propose(tokens, 3) == [7, 8, 5]  # "2 3" last occurred before 7 (the suffix itself is not a match)
    tokens += [7, 8]
    assert index.propose(tokens, 2) == [5, 2]  # "3 7 8" (n = 3) wins over shorter matches
    assert speculative.NgramIndex(2, 2).propose([4, 5, 6], 3) == []
    assert speculative.NgramIndex(1, 1).propose([4, 4], 3) == [4]  # a loop drafts itself


def test_greedy_speculation_equals_plain_greedy_and_accepts_drafts(llm, oracle):
    prompt = llm.tokenizer.encode(PROMPT)
    plain = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    ref = llm.generate(prompt, plain)[0].outputs[0].token_ids
    oracle.tokens, oracle.prompt_len = ref, len(prompt)
    accepted = {}
    for wrong_at in (10**9, 0, 5, 17):  # all drafts right; all wrong; wrong from some token on
        oracle.wrong_at = wrong_at
        out = llm.generate(prompt, plain.replace(**SPEC))[0]
        assert out.outputs[0].token_ids == ref, wrong_at
        assert out.num_draft_tokens > 0
        accepted[wrong_at] = out.num_accepted_tokens
    assert accepted[0] == 0
    assert accepted[10**9] >= 30 and 0 < accepted[5] < accepted[17] < accepted[10**9]


def test_prompt_lookup_greedy_equals_plain_on_many_prompts(llm):
    """Real n-gram drafts: prompts holding the model's own greedy continuation C of P, where its output meets them."""
    plain = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    p = llm.tokenizer.encode(PROMPT)
    c = llm.generate(p, plain)[0].outputs[0].token_ids
    prompts = [c + p, p + c + p, c + p + c[:3], "a b a b a b a b a", "1, 2, 3, 1, 2, 3, 1, 2", PROMPT + " " + PROMPT]
    ref = llm.generate(prompts, plain)
    spec = llm.generate(prompts, plain.replace(**SPEC))
    assert [o.outputs[0].token_ids for o in spec] == [o.outputs[0].token_ids for o in ref]
    assert sum(o.num_draft_tokens for o in spec) > sum(o.num_accepted_tokens for o in spec) > 0


def test_stop_logprobs_max_tokens_and_deltas_match_plain(llm, oracle):
    prompt = llm.tokenizer.encode(PROMPT)
    base = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True, logprobs=2)
    ref = llm.generate(prompt, base)[0].outputs[0]
    oracle.tokens, oracle.prompt_len, oracle.wrong_at = ref.token_ids, len(prompt), 10**9
    stop_text = ref.text[len(ref.text) // 2 : len(ref.text) // 2 + 3]
    for params in (base, base.replace(max_tokens=7), base.replace(stop=[stop_text]),
                   base.replace(stop_token_ids=[ref.token_ids[9]]), base.replace(n=3, temperature=0.0)):
        want = llm.generate(prompt, params)[0]
        got = llm.generate(prompt, params.replace(**SPEC))[0]
        for w, g in zip(want.outputs, got.outputs, strict=True):
            assert (g.token_ids, g.text, g.finish_reason, g.stop_reason) == \
                (w.token_ids, w.text, w.finish_reason, w.stop_reason)
            assert [(lp.token_id, lp.top) for lp in g.logprobs] == [(lp.token_id, lp.top) for lp in w.logprobs]
            assert [lp.logprob for lp in g.logprobs] == pytest.approx([lp.logprob for lp in w.logprobs], abs=1e-5)
        assert got.num_accepted_tokens > 0
    engine = llm.engine
    request_id = engine.add_request(prompt, base.replace(**SPEC), output_kind=OutputKind.DELTA)
    joiner = DeltaJoiner()
    while engine.has_unfinished_requests():
        for out in engine.step():
            assert out.request_id == request_id
            for delta in out.outputs:
                joiner.add(delta)
    (joined,) = joiner.outputs()
    assert (joined.token_ids, joined.text) == (ref.token_ids, ref.text)


def test_rejected_drafts_give_their_blocks_back(llm, oracle):
    prompt = llm.tokenizer.encode(PROMPT)
    ref = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))[0].outputs[0].token_ids
    oracle.tokens, oracle.prompt_len, oracle.wrong_at = ref, len(prompt), 0  # every draft is rejected
    engine = llm.engine
    engine.add_request(prompt, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True,
                                              num_speculative_tokens=8))
    engine.step()  # prefill
    seq = engine.scheduler.running[0]
    while engine.has_unfinished_requests():
        engine.step()
        if not seq.is_finished:
            assert seq.num_computed_tokens == len(seq.token_ids) - 1
            assert len(seq.block_table) == -(-seq.num_computed_tokens // 4)  # nothing past the kept tokens
            held = engine.num_total_blocks - engine.num_free_blocks
            assert held == len(seq.block_table)
    assert seq.num_draft_tokens > 0 and seq.num_accepted_tokens == 0


def test_speculative_sample_is_reproducible_and_independent_of_batch(llm):
    params = SamplingParams(temperature=0.9, seed=5, max_tokens=20, ignore_eos=True, **SPEC)
    alone = llm.generate("a b a b a b a b a", params)[0].outputs[0].token_ids
    batch = llm.generate(["a b a b a b a b a", PROMPT, "1, 2, 3, 1, 2, 3"],
                         [params, params.replace(seed=1), SamplingParams(temperature=0, max_tokens=9)])
    assert batch[0].outputs[0].token_ids == alone


def _recording_batches(llm, monkeypatch) -> list[list[tuple[str, int, int, int]]]:
    """Per step: (request id, rows, drafts run, drafts proposed) of every sequence the scheduler put in it, and
    (request id, 0, 0, drafts proposed) for a speculating one it left out."""
    from lamina.engine import scheduler as scheduling

    steps: list[list[tuple[str, int, int, int]]] = []
    proposed: dict[str, int] = {}
    schedule, propose = llm.engine.scheduler.schedule, scheduling.propose

    def proposing(seq, *args):
        drafts = propose(seq, *args)
        proposed[seq.request_id] = len(drafts)
        return drafts

    def recorded():
        proposed.clear()
        batch = schedule()
        step = [(s.request_id, n, 0, 0) for s, n, _ in batch.prefills]
        step += [(s.request_id, 1 + len(d), len(d), proposed[s.request_id]) for s, d, _ in batch.decodes]
        ran = {r for r, *_ in step}
        steps.append(step + [(r, 0, 0, p) for r, p in proposed.items() if r not in ran and p])
        return batch

    monkeypatch.setattr(scheduling, "propose", proposing)
    monkeypatch.setattr(llm.engine.scheduler, "schedule", recorded)
    return steps


def test_a_speculating_row_counts_its_drafts_in_the_step_budget(tiny_llama_dir, oracle, monkeypatch):
    """max_num_batched_tokens = 6: a sequence verifying 4 drafts takes 5 of them, so two such never share a step,
    and the decodes beside it get what is left; a sampled sequence whose drafts do not fit waits a step (cutting them
    would change its sample), a greedy one runs with fewer drafts; outputs are those of plain decoding."""
    llm = LLM(str(tiny_llama_dir), num_kv_blocks=256, block_size=4, num_threads=1, max_num_batched_tokens=6)
    prompt = llm.tokenizer.encode(PROMPT)[:5]
    greedy = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    sampled = SamplingParams(temperature=0.9, seed=3, max_tokens=12, ignore_eos=True, **SPEC)
    ref = [o.outputs[0].token_ids for o in llm.generate([prompt] * 3, [greedy, greedy, greedy])]
    oracle.tokens, oracle.prompt_len = ref[0], len(prompt)  # drafts: the greedy continuation (4 a step)
    alone = llm.generate(prompt, sampled)[0].outputs[0].token_ids
    steps = _recording_batches(llm, monkeypatch)
    outs = llm.generate([prompt] * 4, [greedy.replace(**SPEC), greedy.replace(**SPEC), greedy, sampled])
    assert [o.outputs[0].token_ids for o in outs] == ref + [alone]
    assert all(sum(rows for _, rows, _, _ in step) <= 6 for step in steps)
    runs = [(r, ran, wanted) for step in steps for r, rows, ran, wanted in step if rows]
    assert any(ran == 4 for _, ran, _ in runs)  # a whole speculating row: 5 of the 6
    greedy_ids = {o.request_id for o in outs[:2]}
    assert any(r in greedy_ids and 0 <= ran < wanted for r, ran, wanted in runs)  # a greedy row cut to what was left
    sampled_id = outs[3].request_id
    assert all(ran == wanted for r, ran, wanted in runs if r == sampled_id)  # the sampled one never cut ...
    assert any(r == sampled_id and not rows for step in steps for r, rows, _, _ in step)  # ... it waited instead


def _tokens_seen(llm, prompt, params):
    """Frequencies of 800 samples' token sequences; drafts proposed and accepted."""
    counts: Counter[tuple[int, ...]] = Counter()
    outs = llm.generate([prompt] * 4, [params.replace(seed=s, n=200) for s in range(4)])
    for out in outs:
        counts.update(tuple(c.token_ids) for c in out.outputs)
    return counts, sum(o.num_draft_tokens for o in outs), sum(o.num_accepted_tokens for o in outs)


def test_speculative_sampling_keeps_the_distribution(llm, oracle):
    """Sequences of 3 tokens at top_k=3: plain sampling against rejection-sampled drafts (a fixed continuation, so
    drafts are sometimes kept, sometimes not), same seeds, chi-square on the joint frequencies."""
    scipy_stats = pytest.importorskip("scipy.stats")
    prompt = llm.tokenizer.encode(PROMPT)
    params = SamplingParams(temperature=0.7, top_k=3, max_tokens=3, ignore_eos=True)
    oracle.tokens = llm.generate(prompt, params.replace(temperature=0))[0].outputs[0].token_ids
    oracle.prompt_len, oracle.wrong_at = len(prompt), 10**9
    plain, _, _ = _tokens_seen(llm, prompt, params)
    spec_counts, drafted, accepted = _tokens_seen(llm, prompt, params.replace(num_speculative_tokens=2))
    assert drafted > accepted > 0.1 * drafted
    cells = sorted(set(plain) | set(spec_counts))
    table = [[plain[c] for c in cells], [spec_counts[c] for c in cells]]
    kept = [i for i in range(len(cells)) if table[0][i] + table[1][i] >= 10]
    chi2 = scipy_stats.chi2_contingency([[row[i] for i in kept] for row in table])
    assert chi2.pvalue > 0.01, (chi2.pvalue, table)
    assert plain != spec_counts  # a different random stream: the equal frequencies are not a copy
    assert sum(spec_counts.values()) == 800


def test_rejection_sampling_against_the_exact_distribution():
    """verify() on fixed logits: the first token's frequencies against p itself, drafts of high, low and no mass."""
    scipy_stats = pytest.importorskip("scipy.stats")
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, -30.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    p = torch.softmax(logits[0], -1)
    params = SamplingParams(temperature=1.0, num_speculative_tokens=1)
    for draft in (0, 3, 4):
        counts = torch.zeros(5)
        seq = Sequence("r", 0, [1], 1, params, make_generator(draft, 0))
        for _ in range(1500):
            counts[speculative.verify(logits, seq, [draft])[0]] += 1
        expected = p[:4]
        stat = scipy_stats.chisquare(counts[:4].numpy(), expected.numpy() * counts[:4].sum().item() / expected.sum().item())
        assert stat.pvalue > 0.01, (draft, counts)
        assert counts[4] == 0


def test_speculation_is_off_with_a_grammar_or_a_repetition_penalty(llm):
    prompt = "a b a b a b a b a"
    grammar = SamplingParams(temperature=0, max_tokens=8, structured_outputs={"choice": ["yes", "no"]}, **SPEC)
    assert llm.generate(prompt, grammar)[0].num_draft_tokens == 0
    penalty = SamplingParams(temperature=0, max_tokens=8, repetition_penalty=1.3, ignore_eos=True, **SPEC)
    assert llm.generate(prompt, penalty)[0].num_draft_tokens == 0


@pytest.mark.parametrize("bad", [dict(num_speculative_tokens=-1), dict(num_speculative_tokens=17),
                                 dict(prompt_lookup_min=0), dict(prompt_lookup_min=5, prompt_lookup_max=3)])
def test_bad_speculative_params(bad):
    name = next(iter(bad))
    with pytest.raises(InvalidRequestError, match=f"SamplingParams.{name}="):
        SamplingParams(**bad)


def test_real_model_greedy_speculation_equals_plain(real_llm):
    prompt = ("Repeat this text exactly:\n\nThe library opens at nine in the morning and closes at six in the evening. "
              "Children under twelve must be accompanied by an adult.\n\nRepeated text:\n\n")
    plain = SamplingParams(temperature=0, max_tokens=48)
    ref = real_llm.generate(prompt, plain)[0]
    spec = real_llm.generate(prompt, plain.replace(num_speculative_tokens=4))[0]
    assert spec.outputs[0].token_ids == ref.outputs[0].token_ids
    assert spec.num_accepted_tokens > 10
