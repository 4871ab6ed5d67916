"""Selectors that need no training, on a scripted backend with canned logprobs: votes weighted by self-certainty
or mean log-prob, reward/rank by the generator's own confidence, and the generator asked for the logprobs a later
layer needs."""
from __future__ import annotations

import math

import pytest

from lamina.backends.base import Completion, TokenLP
from lamina.errors import SpecError

from tests.archs import run_spec
from tests.scripted import ScriptedBackend

QUESTION = [{"role": "user", "content": "What is 2 + 2?"}]


def run(layers, samples, generate=None):
    backend = ScriptedBackend({"2 + 2?": samples})
    first = [{"type": "generate", "samples": len(samples), "name": "gen", **(generate or {})}]
    spec = {"name": "selectors", "models": {"m": {"model": "scripted"}}, "layers": [first, *layers]}
    return run_spec(spec, QUESTION, backends={"m": backend}), backend


def sample(text, p_token, leftover):
    """A one-token sample drawn with probability p_token; its top alternatives leave `leftover` unlisted."""
    top = {text: math.log(p_token), "other": math.log(1 - p_token - leftover)}
    return Completion(text, 1, [TokenLP(text, math.log(p_token), top)], "stop")


# one sure "5" (almost all mass in its top-2), two unsure "4"s (half the mass unlisted)
SURE_5, UNSURE_4 = sample("5", 0.9, 1e-6), sample("4", 0.3, 0.5)
SAMPLES = [UNSURE_4, SURE_5, UNSURE_4]


def test_self_certainty_weights_let_one_sure_sample_outvote_two_unsure_ones():
    result, backend = run([[{"type": "vote", "extract": "number", "weights": "self_certainty", "keep": "all"}]],
                          SAMPLES)
    assert backend.calls[0].params.logprobs == 20  # asked for by the vote, not by the spec
    assert [c.answer for c in result.final] == ["5", "4", "4"]
    plain, backend = run([[{"type": "vote", "extract": "number"}]], SAMPLES)
    assert backend.calls[0].params.logprobs is None and [c.answer for c in plain.final] == ["4", "4"]


def test_mean_logprob_weights_use_each_sample_s_mean_token_probability():
    samples = [sample("4", 0.3, 0.5), sample("5", 0.9, 0.05), sample("4", 0.3, 0.5)]  # 0.9 > 0.3 + 0.3
    result, backend = run([[{"type": "vote", "extract": "number", "weights": "mean_logprob"}]], samples)
    assert backend.calls[0].params.logprobs == 0 and result.candidates == ["5"]
    samples[1] = sample("5", 0.5, 0.05)  # 0.5 < 0.6: the pair wins
    result, _ = run([[{"type": "vote", "extract": "number", "weights": "mean_logprob"}]], samples)
    assert result.candidates == ["4", "4"]


def test_a_spec_s_own_logprobs_win_and_a_vote_without_scores_falls_back_to_the_plain_majority():
    layers = [[{"type": "vote", "extract": "number", "weights": "self_certainty", "name": "v"}]]
    result, backend = run(layers, [Completion(t, 1, [TokenLP(t, -0.1)], "stop") for t in ("4", "5", "4")],
                          {"logprobs": 0})
    assert backend.calls[0].params.logprobs == 0 and result.candidates == ["4", "4"]
    notes = [e for e in result.trace if e["event"] == "note" and e["component"] == "v"]
    assert notes[0]["fallback"] == "no scores for weights self_certainty"


@pytest.mark.parametrize("layer", [{"type": "reward", "mode": "self_certainty"},
                                   {"type": "rank", "method": "reward", "reward_mode": "self_certainty"}])
def test_reward_and_rank_by_self_certainty_pick_the_surest_sample_without_calls(layer):
    result, backend = run([[layer]], SAMPLES)
    assert result.answer == "5" and len(backend.calls) == 1
    assert result.final[0].score == pytest.approx(result.final[0].self_certainty) and result.final[0].score > 0
    assert backend.calls[0].params.logprobs == 20


@pytest.mark.parametrize("layer", [{"type": "reward", "mode": "mean_logprob"},
                                   {"type": "rank", "method": "reward", "reward_mode": "mean_logprob"}])
def test_reward_and_rank_by_mean_logprob(layer):
    samples = [sample("a", 0.3, 0.5), sample("b", 0.6, 0.1), sample("c", 0.5, 0.1)]
    result, backend = run([[layer]], samples)
    assert result.candidates == ["b", "c", "a"] and backend.calls[0].params.logprobs == 0
    assert [c.score for c in result.final] == pytest.approx([math.log(0.6), math.log(0.5), math.log(0.3)])


def test_a_later_layer_s_need_reaches_the_generator_through_layers_between():
    layers = [[{"type": "rank", "method": "reward", "reward_mode": "mean_logprob", "top_k": 3}],
              [{"type": "vote", "extract": "number", "weights": "self_certainty"}]]
    result, backend = run(layers, SAMPLES)
    assert backend.calls[0].params.logprobs == 20 and result.candidates == ["5"]


@pytest.mark.parametrize("layer,message", [
    ({"type": "vote", "weights": "verifier"}, "weights: verifier needs the field `verifier"),
    ({"type": "reward", "mode": "verifier"}, "mode: verifier needs the field `verifier"),
    ({"type": "rank", "method": "reward", "reward_mode": "judge", "verifier": "v.json"}, "reward_mode: verifier"),
    ({"type": "vote", "method": "inverse_entropy", "weights": "mean_logprob"}, "cannot weight method inverse_entropy"),
])
def test_spec_errors_name_the_field(layer, message):
    with pytest.raises(SpecError, match=message):
        run([[layer]], SAMPLES)
