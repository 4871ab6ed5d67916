"""Usage roll-up: per call, per component, per query, per run."""
from __future__ import annotations

import asyncio

from lamina.accounting import Usage
from lamina.architecture import Architecture


def test_add_call_rolls_up_per_component():
    usage = Usage()
    usage.add_call("gen", 10, 20, 0.5, cached=False, cached_prompt_tokens=4)
    usage.add_call("gen", 10, 5, 0.25, cached=False)
    usage.add_call("rank", 7, 3, 0.1, cached=True)
    assert (usage.prompt_tokens, usage.completion_tokens, usage.calls, usage.cached_calls) == (27, 28, 2, 1)
    assert (usage.spent_prompt_tokens, usage.spent_completion_tokens, usage.cached_prompt_tokens) == (20, 25, 4)
    assert usage.by_component["gen"].completion_tokens == 25 and usage.by_component["rank"].cached_calls == 1
    rank = usage.by_component["rank"]  # a cached call costs what it cost when made, and spends nothing now
    assert (rank.total_tokens, rank.spent_tokens, rank.calls) == (10, 0, 0)


def test_sum_merges_components_and_serialises():
    a, b = Usage(), Usage()
    a.add_call("gen", 1, 2, 1.0, cached=False, cached_prompt_tokens=1)
    b.add_call("gen", 3, 4, 2.0, cached=True, cached_prompt_tokens=3)  # a replay: no prefix-cache hit either
    b.add_call("fuse", 5, 6, 0.5, cached=False)
    total = a + b

    def usage(prompt, completion, spent_prompt, spent_completion, prefix, calls, cached, seconds, parts=None):
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "spent_prompt_tokens": spent_prompt, "spent_completion_tokens": spent_completion,
                "spent_tokens": spent_prompt + spent_completion, "cached_prompt_tokens": prefix, "calls": calls,
                "cached_calls": cached, "seconds": seconds, "by_component": parts or {}}

    assert total.to_dict() == usage(9, 12, 6, 8, 1, 2, 1, 3.5, {"gen": usage(4, 6, 1, 2, 1, 1, 1, 3.0),
                                                                "fuse": usage(5, 6, 5, 6, 0, 1, 0, 0.5)})
    assert a.calls == 1 and "fuse" not in a.by_component  # operands untouched


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
        assert result.usage.spent_tokens == result.usage.total_tokens  # no call cache: everything was computed
        assert result.usage.by_component["gen"].calls == 1 and result.usage.by_component["crit"].calls == 2
    assert arch.usage.calls == 6 and arch.usage.by_component["crit"].calls == 4
    # the engine's prefix cache served the shared chat-template prefix of the later calls
    assert 0 < arch.usage.cached_prompt_tokens < arch.usage.prompt_tokens
    assert arch.usage.completion_tokens == sum(r.usage.completion_tokens for r in results)
