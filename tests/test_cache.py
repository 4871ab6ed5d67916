"""SQLite call cache: a second identical run makes zero model calls and returns identical answers."""
from __future__ import annotations

import pytest

from lamina.backends.base import Completion, Completions, TokenLP
from lamina.cache import CallCache, call_key
from lamina.engine.sampling_params import SamplingParams

from tests.archs import run_spec

QUESTION = [{"role": "user", "content": "What is 3 + 4?"}]


@pytest.fixture(scope="module")
def spec(tiny_llama_dir):
    return {"name": "cached", "models": {"tiny": {"model": str(tiny_llama_dir), "params": {"max_tokens": 5},
                                                  "engine": {"num_kv_blocks": 1024, "block_size": 8}}},
            "layers": [[{"type": "generate", "samples": 3}], [{"type": "critique", "max_tokens": 5}],
                       [{"type": "rank", "top_k": 2, "max_tokens": 5}], [{"type": "fuse"}]]}


def run_once(spec, cache, messages=QUESTION):
    return run_spec(spec, messages, cache=cache)


def test_replay_makes_zero_calls_and_returns_identical_answers(spec, tmp_path):
    path = tmp_path / "calls.sqlite"
    first = run_once(spec, path)
    assert first.usage.calls == 6 and first.usage.cached_calls == 0  # generate, 3 critiques, rank, fuse
    second = run_once(spec, path)  # a new Architecture, the same file
    assert second.usage.calls == 0 and second.usage.cached_calls == 6
    assert second.usage.spent_tokens == 0 and first.usage.spent_tokens == first.usage.total_tokens > 0
    cost = lambda usage: (usage.prompt_tokens, usage.completion_tokens)  # noqa: E731
    assert cost(second.usage) == cost(first.usage)  # a replay reports the cost of the run it replays
    assert {n: cost(u) for n, u in second.usage.by_component.items()} == \
        {n: cost(u) for n, u in first.usage.by_component.items()}
    assert second.answer == first.answer and second.candidates == first.candidates
    assert second.usage.by_component["L1.0.critique"].cached_calls == 3
    assert len(CallCache(path)) == 3 + 3 + 1 + 1  # one row per sample


def test_a_different_query_or_seed_misses(spec, tmp_path):
    path = tmp_path / "calls.sqlite"
    run_once(spec, path)
    other = run_once(spec, path, [{"role": "user", "content": "What is 5 + 6?"}])
    assert other.usage.cached_calls == 0 and other.usage.calls == 6
    reseeded = run_once({**spec, "seed": 1}, path)
    assert reseeded.usage.calls == 6


def test_no_cache_always_calls(spec):
    assert run_once(spec, False).usage.calls == 6


def test_key_covers_backend_messages_params_seed_and_index(tmp_path):
    params = SamplingParams(temperature=0.7, seed=1, max_tokens=8)
    base = call_key("local:default", QUESTION, None, params, 0)
    assert base == call_key("local:default", QUESTION, None, params.replace(n=4), 0)  # n is not part of a sample's key
    variants = [call_key("local:other", QUESTION, None, params, 0),
                call_key("local:default", [{"role": "user", "content": "x"}], None, params, 0),
                call_key("local:default", QUESTION, None, params.replace(temperature=0.8), 0),
                call_key("local:default", QUESTION, None, params.replace(seed=2), 0),
                call_key("local:default", QUESTION, None, params, 1),
                call_key("local:default", QUESTION, None, params, 0, mode="first_finish")]
    assert len({base, *variants}) == 7
    greedy = params.replace(temperature=0.0)  # a greedy call's output does not depend on its seed: neither does its key
    assert call_key("local:default", QUESTION, None, greedy, 0) == call_key("local:default", QUESTION, None,
                                                                           greedy.replace(seed=2), 0)


def test_rows_round_trip_with_logprobs_and_cost(tmp_path):
    cache = CallCache(tmp_path / "c.sqlite")
    item = Completion("hi", 2, [TokenLP("h", -0.1, {"h": -0.1, "x": -2.5})], "stop")
    other = Completion("hello there", 3, None, "length")
    cache.put_many("local:m", ["k1", "k2"], Completions([item, other], prompt_tokens=11))
    hit = cache.get_many(["k1", "k2"])
    assert list(hit) == [item, other] and (hit.prompt_tokens, hit.completion_tokens) == (11, 5)
    assert cache.get_many(["k2"]).completion_tokens == 3  # a sample's share of the call's cost
    assert cache.get_many(["k1", "k3"]) is None


def test_a_first_finish_row_keeps_what_every_sample_generated(tmp_path):
    cache = CallCache(tmp_path / "c.sqlite")
    winner = Completion("4", 1, None, "stop")
    cache.put_many("local:m", ["ff"], Completions([winner], prompt_tokens=9, spent_tokens=7))
    hit = cache.get_many(["ff"])
    assert list(hit) == [winner] and (hit.prompt_tokens, hit.completion_tokens) == (9, 7)


def test_a_cache_written_before_rows_kept_their_cost_still_opens(tmp_path):
    import json
    import sqlite3

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE calls (key TEXT PRIMARY KEY, backend TEXT NOT NULL, completion TEXT NOT NULL, "
               "prompt_tokens INTEGER NOT NULL, created REAL DEFAULT (julianday('now')))")
    db.execute("INSERT INTO calls (key, backend, completion, prompt_tokens) VALUES (?, ?, ?, ?)",
               ("old", "local:m", json.dumps(Completion("a b c", 3).to_dict()), 6))
    db.commit()
    db.close()
    hit = CallCache(path).get_many(["old"])
    assert [c.text for c in hit] == ["a b c"] and (hit.prompt_tokens, hit.completion_tokens) == (6, 3)
