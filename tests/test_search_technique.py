"""The `search` technique: step-level search as a layer of an architecture spec (scripted tree and reward, the tiny
random model end to end, the real model per algorithm, slow); spec errors name the field."""
from __future__ import annotations

import asyncio

import pytest

from lamina.decoding import ALGORITHMS
from lamina.errors import SpecError
from lamina.spec import parse_spec
from tests.archs import run_spec
from tests.scripted_tree import ScriptedTree


def spec(**search) -> dict:
    return {"name": "s", "models": {"m": {"model": "default"}},
            "layers": [[{"type": "search", "model": "m", **search}]]}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_search_layer_returns_its_answers_counts_usage_and_traces_the_tree(algorithm, monkeypatch):
    from lamina.techniques import search as technique

    monkeypatch.setattr(technique, "mean_logprob_reward", lambda: __import__("tests.scripted_tree",
                                                                               fromlist=["DigitSum"]).DigitSum())
    backend = ScriptedTree()
    result = run_spec(spec(algorithm=algorithm, width=16, beam_width=4, depth=6, step_max_tokens=4,
                           resample_temperature=0.01), "q", backends={"m": backend})
    assert result.answer == "3\n3\n3\ndone"
    (event,) = [e for e in result.trace if e["event"] == "search"]
    assert event["algorithm"] == algorithm and event["stopped"] is None
    assert len(event["nodes"]) == event["usage"]["steps"] + 1
    assert result.usage.calls == len(backend.requests) == event["usage"]["requests"]
    assert result.usage.completion_tokens == event["usage"]["completion_tokens"]
    assert result.usage.cached_prompt_tokens == event["usage"]["cached_prompt_tokens"]
    assert backend.nodes == {}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("width, beam_width", [(8, 2), (4, 4), (6, 1)])
def test_the_cost_bound_holds_when_no_path_ends_early(algorithm, width, beam_width):
    """search_cost (the budget reservation, and the architecture search's constraint check) is an upper bound on
    the requests and tokens of a search whose paths all run to the depth limit, and exact where the algorithm
    always fills its rounds (best_of_n, beam, dvts)."""
    from lamina.decoding import SearchConfig, search
    from lamina.techniques.search import SearchSpec, search_cost
    from tests.scripted_tree import DigitSum

    comp = SearchSpec.model_validate({"type": "search", "algorithm": algorithm, "width": width,
                                      "beam_width": beam_width, "depth": 5, "step_max_tokens": 1})
    config = SearchConfig(comp.delimiter, comp.step_max_tokens, comp.width, comp.beam_width, comp.depth, 0.8, 1.0, 7)
    backend = ScriptedTree(answer_depth=99)  # no answer ends before the depth limit
    result = asyncio.run(search(algorithm, backend, DigitSum(), [{"role": "user", "content": "q"}], config))
    bound = search_cost(comp, prompt_tokens=5)
    u = result.usage
    assert u.requests <= bound.calls and u.prompt_tokens + u.completion_tokens <= bound.tokens
    assert u.completion_tokens <= bound.tokens - bound.calls * (5 + 5)  # the generated part of the bound
    if algorithm in ("best_of_n", "beam", "dvts"):
        assert u.requests == bound.calls and u.completion_tokens == bound.tokens - bound.calls * (5 + 5)


def test_a_search_that_runs_out_of_budget_notes_it():
    from tests.scripted_tree import ScriptedTree

    result = run_spec(spec(algorithm="beam", width=4, beam_width=2, depth=6, step_max_tokens=4,
                           budget={"max_tokens": 10}), "q", backends={"m": ScriptedTree()})
    assert result.usage.completion_tokens <= 10
    notes = [e for e in result.trace if e["event"] == "note"]
    assert notes and "max_tokens=10 ran out" in notes[0]["reason"]


@pytest.mark.parametrize("fields, message", [
    ({"algorithm": "greedy"}, r"layers\[0\]\[0\]\.algorithm"),
    ({"max_tokens": 10}, "max_tokens: a search's step length is step_max_tokens"),
    ({"algorithm": "beam", "width": 2, "beam_width": 4}, "beam_width: 4 exceeds width 2"),
    ({"algorithm": "beam", "weighted": True}, "weighted: applies to algorithm best_of_n only"),
    ({"reward": "verifier"}, "reward: verifier needs the field `verifier"),
    ({"judge_model": "m"}, "judge_model: is read only with reward: judge"),
    ({"width": 0}, r"layers\[0\]\[0\]\.width"),
    ({"budget": {"max_tokens": 0}}, r"layers\[0\]\[0\]\.budget\.max_tokens"),
])
def test_spec_errors_name_the_field(fields, message):
    with pytest.raises(SpecError, match=message):
        parse_spec(spec(**fields))


def test_end_to_end_on_the_tiny_model_with_kv_blocks_in_the_trace(tiny_llama_dir):
    from lamina.backends.local import shutdown_all

    tiny = {"name": "s", "models": {"m": {"model": str(tiny_llama_dir), "engine": {"num_kv_blocks": 256,
                                                                                  "block_size": 4}}},
            "layers": [[{"type": "search", "model": "m", "algorithm": "beam", "width": 4, "beam_width": 2,
                         "depth": 3, "step_max_tokens": 5, "delimiter": " ", "reward": "self_certainty"}]]}
    try:
        result = run_spec(tiny, "Say something.")
    finally:
        shutdown_all()
    (event,) = [e for e in result.trace if e["event"] == "search"]
    assert result.answer and event["kv_blocks"]["used"] < event["kv_blocks"]["copy_per_path"]
    assert result.usage.cached_prompt_tokens > 0 and result.usage.completion_tokens == event["usage"]["completion_tokens"]


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_each_algorithm_answers_on_the_real_model(algorithm):
    from lamina.backends.local import shutdown_all

    real = {"name": "s", "models": {"m": {"model": "default", "engine": {"kv_cache_memory_gb": 0.25}}},
            "layers": [[{"type": "search", "model": "m", "algorithm": algorithm, "width": 4, "beam_width": 2,
                         "depth": 4, "step_max_tokens": 24, "seed": 1, "budget": {"max_tokens": 600}}]]}
    try:
        result = run_spec(real, "What is 12 + 7? Answer with the number.")
    finally:
        shutdown_all()
    (event,) = [e for e in result.trace if e["event"] == "search"]
    assert result.answer.strip() and event["usage"]["completion_tokens"] <= 600
    assert result.usage.calls == event["usage"]["requests"] > 0
