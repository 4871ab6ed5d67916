"""The reward models that need no extra model: confidence (mean log-prob, self-certainty from top-k), a judge's
verdict probability, a task's tests in the sandbox; exact values on canned logprobs."""
from __future__ import annotations

import asyncio
import math

import pytest

from lamina.backends.base import Completion, TokenLP
from lamina.rewards import (Response, TestsPassed, VerdictJudge, mean_logprob_reward, self_certainty,
                            self_certainty_reward)
from lamina.rewards.confidence import token_self_certainty


def lp(token, p, top):
    return TokenLP(token, math.log(p), {k: math.log(v) for k, v in top.items()})


def test_self_certainty_is_kl_from_uniform_with_the_leftover_spread_over_unlisted_tokens():
    # V = 4, three listed tokens: the fourth gets the leftover 0.1, so the distribution is exact
    token = lp("a", 0.5, {"a": 0.5, "b": 0.2, "c": 0.2})
    full = [0.5, 0.2, 0.2, 0.1]
    expected = sum(0.25 * math.log(0.25 / p) for p in full)
    assert token_self_certainty(token, vocab_size=4) == pytest.approx(expected, rel=1e-12)
    # V = 6: the leftover 0.1 spread over the 3 unlisted tokens
    full6 = [0.5, 0.2, 0.2] + [0.1 / 3] * 3
    assert token_self_certainty(token, vocab_size=6) == pytest.approx(sum(math.log((1 / 6) / p) for p in full6) / 6)


def test_self_certainty_counts_the_sampled_token_and_prefers_peaked_positions():
    sampled_outside_top = TokenLP("z", math.log(0.3), {"a": math.log(0.6)})
    assert token_self_certainty(sampled_outside_top, 3) == pytest.approx(
        sum(math.log((1 / 3) / p) for p in (0.6, 0.3, 0.1)) / 3)
    peaked = [lp("4", 0.99, {"4": 0.99, "5": 0.009})]
    flat = [lp("4", 0.3, {"4": 0.3, "5": 0.3, "6": 0.2})]
    assert self_certainty(peaked) > self_certainty(flat) > 0
    assert self_certainty([TokenLP("4", -0.1)]) is None and self_certainty(None) is None
    with pytest.raises(ValueError, match="vocab_size"):
        token_self_certainty(lp("a", 0.5, {"a": 0.5, "b": 0.2}), vocab_size=2)


def test_confidence_rewards_score_answers_and_every_prefix_of_steps():
    a = Response("x", [TokenLP("x", -1.0), TokenLP("y", -3.0)])
    b = Response("no logprobs")
    orm = mean_logprob_reward()
    assert asyncio.run(orm.score("q", [a, b])) == [-2.0, None]
    steps = [[Response("s1", [TokenLP("s", -1.0)]), Response("s2", [TokenLP("t", -3.0)])],
             [Response("s1"), Response("s2", [TokenLP("t", -3.0)])]]
    assert asyncio.run(orm.score_steps("q", steps)) == [[-1.0, -2.0], [None, None]]
    peaked = Response("4", [lp("4", 0.99, {"4": 0.99})])
    flat = Response("4", [lp("4", 0.3, {"4": 0.3, "5": 0.3})])
    high, low = asyncio.run(self_certainty_reward().score("q", [peaked, flat]))
    assert high > low


def verdict(p_yes, p_no):
    top = {"Yes": math.log(p_yes), "No": math.log(p_no)}
    return Completion("Yes", 1, [TokenLP("Yes", top["Yes"], top)], "length")


def test_verdict_judge_scores_answers_and_prefixes_with_one_call_each():
    prompts = []

    async def ask(prompt, index):
        prompts.append((index, prompt))
        if "Maybe" in prompt:
            return Completion("Hmm", 1, [TokenLP("Hmm", -0.1, {"Hmm": -0.1})])
        return verdict(0.6, 0.2) if "good" in prompt else verdict(0.2, 0.6)

    judge = VerdictJudge(ask)
    assert asyncio.run(judge.score("What?", [Response("good"), Response("bad"), Response("Maybe")])) == [
        pytest.approx(0.75), pytest.approx(0.25), None]
    assert [i for i, _ in prompts] == [0, 1, 2] and "Question: What?\n\nResponse: good" in prompts[0][1]
    prompts.clear()
    steps = [[Response("bad "), Response("good")], [Response("good")]]
    assert asyncio.run(judge.score_steps([{"role": "user", "content": "What?"}], steps)) == [
        [pytest.approx(0.25), pytest.approx(0.75)], [pytest.approx(0.75)]]
    assert "Partial response: bad good" in prompts[1][1] and "Is every step so far correct?" in prompts[1][1]


def test_tests_passed_runs_each_answer_s_program_in_the_sandbox():
    answers = [Response("```python\ndef add(a, b):\n    return a + b\n```"), Response("def add(a, b):\n    return 5"),
               Response("```python\nwhile True: pass\n```")]
    checker = TestsPassed(["assert add(2, 3) == 5", "assert add(-1, 1) == 0"], timeout_s=1.0)
    assert asyncio.run(checker.score("q", answers)) == [1.0, 0.5, 0.0]
