"""Usage roll-up: per call, per component, per query, per run."""
from __future__ import annotations

import asyncio

from lamina.accounting import Usage
from lamina.architecture import Architecture


def test_add_call_rolls_up_per_component():
    usage = Usage()
    usage.add_call("gen", 10, 20, 0.5, cached=False)
    usage.add_call("gen", 10, 5, 0.25, cached=False)
    usage.add_call("rank", 7, 3, 0.1, cached=True)
    assert (usage.prompt_tokens, usage.completion_tokens, usage.calls, usage.cached_calls) == (20, 25, 2, 1)
    assert usage.by_component["gen"].completion_tokens == 25 and usage.by_component["rank"].cached_calls == 1
    assert usage.by_component["rank"].prompt_tokens == 0  # a cached call spends no tokens


def test_sum_merges_components_and_serialises():
    a, b = Usage(), Usage()
    a.add_call("gen", 1, 2, 1.0, cached=False)
    b.add_call("gen", 3, 4, 2.0, cached=False)
    b.add_call("fuse", 5, 6, 0.5, cached=False)
    total = a + b
    assert total.to_dict() == {
        "prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21, "calls": 3, "cached_calls": 0,
        "seconds": 3.5,
        "by_component": {"gen": {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10, "calls": 2,
                                 "cached_calls": 0, "seconds": 3.0, "by_component": {}},
                         "fuse": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11, "calls": 1,
                                  "cached_calls": 0, "seconds": 0.5, "by_component": {}}}}
    assert a.calls == 1  # operands untouched


def test_query_and_run_totals_match_the_trace(tiny_llama_dir):
    spec = {"name": "acc", "models": {"tiny": {"model": str(tiny_llama_dir), "params": {"max_tokens": 4},
                                               "engine": {"num_kv_blocks": 1024, "block_size": 8}}},
            "layers": [[{"type": "generate", "samples": 2, "name": "gen"}], [{"type": "critique", "name": "crit"}]]}
    arch = Architecture.from_spec(spec, cache=False)

    async def go():
        try:
            return [await arch.run(q) for q in ("one?", "two?")]
        finally:
            await arch.aclose()

    results = asyncio.run(go())
    for result in results:
        made = [e for e in result.trace if e["event"] == "call"]
        assert result.usage.calls == len(made) == 3
        assert result.usage.prompt_tokens == sum(e["prompt_tokens"] for e in made)
        assert result.usage.completion_tokens == sum(e["completion_tokens"] for e in made)
        assert result.usage.by_component["gen"].calls == 1 and result.usage.by_component["crit"].calls == 2
    assert arch.usage.calls == 6 and arch.usage.by_component["crit"].calls == 4
    assert arch.usage.completion_tokens == sum(r.usage.completion_tokens for r in results)
