"""Techniques through the real local engine on a tiny random Llama (one request per model, logprobs, token ids,
first_finish, rank structure), unit_test executing real programs in the sandbox, and vote on known answers.
Every technique branch with exact replies: tests/test_techniques_scripted.py."""
from __future__ import annotations

import asyncio

import pytest

from lamina.architecture import Architecture
from lamina.calls import Caller
from lamina.budget import BudgetGuard
from lamina.techniques import Candidate, State
from lamina.techniques.unit_test import UnitTest, UnitTestSpec
from lamina.techniques.vote import Vote, VoteSpec

from tests.archs import run_spec

QUESTION = [{"role": "user", "content": "What is 2 + 2?"}]


@pytest.fixture(scope="module")
def tiny_models(tiny_llama_dir):
    alias = {"model": str(tiny_llama_dir), "engine": {"num_kv_blocks": 1024, "block_size": 8},
             "params": {"max_tokens": 6}}
    return {"tiny": alias, "tiny2": dict(alias)}


def run_arch(models, *layers, tests=None, **extra):
    return run_spec({"name": "t", "models": models, "layers": list(layers), **extra}, QUESTION, tests=tests)


def samples(result):
    return [c.text for c in result.first_layer_samples()]


def test_generate_sends_the_samples_of_each_model_as_one_request(tiny_models):
    result = run_arch(tiny_models, [{"type": "generate", "models": ["tiny", "tiny2"], "samples": 3, "name": "gen"}])
    assert len(result.candidates) == 6 and [c.model for c in result.final] == ["tiny"] * 3 + ["tiny2"] * 3
    assert result.usage.calls == 2 and result.usage.by_component["gen"].calls == 2
    assert result.usage.completion_tokens == 6 * 6  # 6 samples x max_tokens (a random model rarely stops early)
    assert result.usage.prompt_tokens > 0
    assert samples(result)[:3] != samples(result)[3:]  # one model's weights twice: only the seeds differ
    for cand in result.final:  # the engine returns the sampled tokens
        assert len(cand.token_ids) == 6 and cand.finish_reason == "length"


def test_generate_with_logprobs_fills_logprob_and_entropy(tiny_models):
    result = run_arch(tiny_models, [{"type": "generate", "model": "tiny", "samples": 2, "logprobs": 3}])
    assert all(c.mean_logprob is not None and c.mean_logprob < 0 for c in result.final)
    assert all(c.mean_entropy is not None and c.mean_entropy > 0 for c in result.final)


def test_first_finish_keeps_one_sample(tiny_models):
    result = run_arch(tiny_models, [{"type": "first_finish", "model": "tiny", "samples": 3, "name": "ff"}])
    assert len(result.candidates) == 1 and result.usage.by_component["ff"].calls == 1
    # what all samples generated before the first finished
    assert result.usage.by_component["ff"].completion_tokens >= len(result.final[0].token_ids) == 6


@pytest.mark.parametrize("method,expected_calls", [("listwise", 1), ("pairwise", 6), ("reward", 4)])
def test_rank_keeps_top_k_of_the_input(tiny_models, method, expected_calls):
    result = run_arch(tiny_models, [{"type": "generate", "model": "tiny", "samples": 4, "name": "gen"}],
                      [{"type": "rank", "model": "tiny", "method": method, "top_k": 2, "name": "rank",
                        "max_tokens": 6}])
    assert len(result.candidates) == 2 and set(result.candidates) <= set(samples(result))
    assert result.usage.by_component["rank"].calls == expected_calls


PROGRAMS = {
    "wrong": "```python\ndef add(a, b):\n    return a - b\n```",
    "right": "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```",
    "loops": "```python\ndef add(a, b):\n    while True:\n        pass\n```",
    "half": "```python\ndef add(a, b):\n    return 5\n```",
}
TESTS = ["assert add(2, 3) == 5", "assert add(-1, 1) == 0"]


def direct_state(arch: Architecture, texts: list[str], tests: list[str] | None) -> State:
    caller = Caller(arch.models, None, BudgetGuard(), "direct")
    return State(QUESTION, caller, [Candidate(t, "given") for t in texts], tests)


def test_unit_test_executes_candidates_in_the_sandbox_and_sorts_by_pass_rate(tiny_models):
    arch = Architecture.from_spec({"name": "t", "models": tiny_models, "layers": [[{"type": "generate"}]]}, cache=False)
    state = direct_state(arch, list(PROGRAMS.values()), TESTS)
    spec = UnitTestSpec(type="unit_test", timeout_s=1.0)
    kept = asyncio.run(UnitTest(spec, "ut").run(state))
    assert [c.text for c in kept] == [PROGRAMS["right"], PROGRAMS["half"], PROGRAMS["wrong"], PROGRAMS["loops"]]
    assert [c.pass_rate for c in kept] == [1.0, 0.5, 0.0, 0.0]
    assert state.calls.usage.calls == 0  # tests came from the task: nothing asked of a model
    best = asyncio.run(UnitTest(UnitTestSpec(type="unit_test", keep="passing", timeout_s=1.0), "ut").run(state))
    assert [c.text for c in best] == [PROGRAMS["right"]]


def vote(texts, method="majority", keep="winner", **fields):
    """Vote needs no model: a Caller with no models proves it makes no call."""
    cands = [Candidate(t, "given", **{k: v[i] for k, v in fields.items()}) for i, t in enumerate(texts)]
    state = State(QUESTION, Caller({"none": None}, None, BudgetGuard(), "v"), cands, None)  # type: ignore[dict-item]
    return asyncio.run(Vote(VoteSpec(type="vote", method=method, keep=keep, extract="number"), "vote").run(state))


def test_majority_vote_and_tie_break():
    texts = ["so 4", "The answer is 5.", "I get 4", "it is 5", "answer: 4.0"]
    assert [c.text for c in vote(texts)] == ["so 4", "I get 4", "answer: 4.0"]
    assert [c.answer for c in vote(texts, keep="all")] == ["4", "4", "4", "5", "5"]
    assert vote(["7", "8"])[0].text == "7"  # a tie goes to the answer seen first


def test_best_of_majority_picks_the_best_scored_member():
    out = vote(["4 a", "4 b", "5", "4 c"], method="best_of_majority", score=[0.1, 0.9, 1.0, 0.5])
    assert [c.text for c in out] == ["4 b", "4 c", "4 a"]


def test_inverse_entropy_vote_lets_confident_samples_win():
    texts = ["5", "4", "4"]
    assert vote(texts)[0].answer == "4"
    out = vote(texts, method="inverse_entropy", mean_entropy=[0.05, 1.0, 1.0])
    assert out[0].answer == "5"
