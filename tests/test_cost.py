"""Cost versus spent on a scripted backend: a run and its replay report the same cost, the replay spends nothing,
prefix-cache hits are reported, first_finish costs every token generated, and the budget counts cost."""
from __future__ import annotations

import pytest

from lamina.errors import BudgetExceededError

from tests.archs import run_spec
from tests.scripted import ScriptedBackend

QUESTION = [{"role": "user", "content": "What is 2 + 2?"}]
MODELS = {"m": {"model": "scripted"}}
SPEC = {"name": "cost", "models": MODELS, "layers": [
    [{"type": "generate", "samples": 3, "name": "gen"}],
    [{"type": "critique", "name": "crit"}],
    [{"type": "fuse", "name": "fuse"}]]}
RULES = {"strengths and the weaknesses": "+ short\n- none", "write one best answer": "four, surely"}


def run(spec, path, **backend_options):
    return run_spec(spec, QUESTION, cache=path, backends={"m": ScriptedBackend(RULES, **backend_options)})


def test_a_replay_costs_what_the_run_cost_and_spends_nothing(tmp_path):
    path = tmp_path / "calls.sqlite"
    first = run(SPEC, path, cached_prompt_tokens=2)
    replay = run(SPEC, path, cached_prompt_tokens=2)
    assert replay.answer == first.answer == "four, surely" and replay.candidates == first.candidates
    assert first.usage.calls == 5 and first.usage.cached_calls == 0
    assert (replay.usage.calls, replay.usage.cached_calls) == (0, 5)
    # generate: 6-word prompt, 3 samples of 2 words; critiques: 2 + 2 words each; fuse: 2 words
    prompt_tokens = first.usage.prompt_tokens
    assert first.usage.completion_tokens == 3 * 2 + 3 * 4 + 2 and prompt_tokens > 6
    for usage in (first.usage, replay.usage):
        assert (usage.prompt_tokens, usage.completion_tokens) == (prompt_tokens, 20)
        assert usage.by_component["crit"].to_dict()["total_tokens"] == first.usage.by_component["crit"].total_tokens
    assert (first.usage.spent_tokens, first.usage.cached_prompt_tokens) == (prompt_tokens + 20, 5 * 2)
    assert (replay.usage.spent_tokens, replay.usage.cached_prompt_tokens) == (0, 0)
    assert replay.usage.to_dict()["spent_tokens"] == 0 and replay.usage.to_dict()["total_tokens"] == prompt_tokens + 20


def test_first_finish_costs_what_every_sample_generated_live_and_replayed(tmp_path):
    spec = {"name": "ff", "models": MODELS, "layers": [[{"type": "first_finish", "samples": 3, "name": "ff"}]]}
    replies = {"2 + 2": ["one two three", "four", "five six"]}
    path = tmp_path / "calls.sqlite"
    first = run_spec(spec, QUESTION, cache=path, backends={"m": ScriptedBackend(replies)})
    replay = run_spec(spec, QUESTION, cache=path, backends={"m": ScriptedBackend(replies)})
    assert first.answer == replay.answer == "four"
    assert first.usage.completion_tokens == replay.usage.completion_tokens == 3  # each sample ran one token
    assert replay.usage.spent_completion_tokens == 0


def test_the_budget_counts_cost_so_a_replay_stops_where_the_run_stopped(tmp_path):
    path = tmp_path / "calls.sqlite"
    budget = {"budget": {"max_calls": 4, "on_exceed": "stop"}}  # generate (1) + critique (3) fit; fuse does not
    first = run({**SPEC, **budget}, path)
    replay = run({**SPEC, **budget}, path)
    assert first.stopped_by_budget and replay.stopped_by_budget
    assert replay.candidates == first.candidates and "fuse" not in replay.usage.by_component
    assert (replay.usage.cached_calls, replay.usage.total_tokens) == (4, first.usage.total_tokens)
    with pytest.raises(BudgetExceededError, match="max_calls=4"):
        run({**SPEC, "budget": {"max_calls": 4}}, path)  # all cached, yet over budget: cost counts


def test_an_openai_compatible_server_reports_its_prefix_cache_hits():
    from lamina.backends.openai import OpenAIBackend

    data = {"choices": [{"index": 0, "message": {"content": "4"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 30, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 16}}}
    out = OpenAIBackend("m")._parse(data, True, 0.0)
    assert (out.prompt_tokens, out.cached_prompt_tokens, out.completion_tokens) == (30, 16, 1)
    bare = OpenAIBackend("m")._parse({"choices": [], "usage": {"prompt_tokens": 3}}, True, 0.0)
    assert bare.cached_prompt_tokens == 0
