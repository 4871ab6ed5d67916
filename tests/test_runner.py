"""The runner on a tiny local model: budgets checked before a layer, resolve rules, seeds, errors, trace, CLI."""
from __future__ import annotations

import asyncio
import json

import pytest

from lamina.architecture import Architecture
from lamina.cli import main
from lamina.errors import BudgetExceededError, InvalidRequestError

QUESTION = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def models(tiny_llama_dir):
    return {"tiny": {"model": str(tiny_llama_dir), "engine": {"num_kv_blocks": 1024, "block_size": 8},
                     "params": {"max_tokens": 5}}}


def build(models, *layers, cache=False, **extra) -> Architecture:
    return Architecture.from_spec({"name": "t", "models": models, "layers": list(layers), **extra}, cache=cache)


def run(arch: Architecture, messages=QUESTION, **kw):
    async def go():
        try:
            return await arch.run(messages, **kw)
        finally:
            await arch.aclose()

    return asyncio.run(go())


GEN4 = [{"type": "generate", "samples": 4, "name": "gen"}]
RANK = [{"type": "rank", "method": "pairwise", "name": "rank"}]


def test_max_calls_is_checked_before_the_layer_runs(models):
    arch = build(models, GEN4, RANK, budget={"max_calls": 4})
    with pytest.raises(BudgetExceededError, match=r"budget.max_calls=4: layers\[1\] \(rank\) needs 6 more call"):
        run(arch)
    assert arch.usage.calls == 0  # run() raised: nothing rolled up


def test_on_exceed_stop_answers_from_the_last_affordable_layer(models):
    result = run(build(models, GEN4, RANK, budget={"max_calls": 4, "on_exceed": "stop"}))
    assert result.stopped_by_budget and len(result.candidates) == 4
    assert result.usage.calls == 1 and "rank" not in result.usage.by_component
    assert any("budget_stop" in e for e in result.trace if e["event"] == "note")


def test_max_tokens_is_an_upper_bound_never_overspent(models):
    with pytest.raises(BudgetExceededError, match="budget.max_tokens=50"):
        run(build(models, GEN4, budget={"max_tokens": 50}))
    result = run(build(models, GEN4, budget={"max_tokens": 400}))
    assert 0 < result.usage.total_tokens <= 400


def test_budget_with_nothing_to_fall_back_on_is_an_error_even_with_stop(models):
    with pytest.raises(BudgetExceededError):
        run(build(models, GEN4, budget={"max_tokens": 10, "on_exceed": "stop"}))


def test_derived_seeds_make_runs_repeatable_without_a_cache(models):
    first = run(build(models, GEN4))
    again = run(build(models, GEN4))
    other = run(build(models, GEN4), seed=1)
    assert first.candidates == again.candidates
    assert other.candidates != first.candidates
    assert len(set(first.candidates)) > 1  # samples of one request differ


def test_a_layer_in_front_does_not_change_what_the_engine_samples(models):
    alone = run(build(models, GEN4))
    behind = run(build(models, [{"type": "generate", "samples": 1, "name": "pre"}], GEN4))
    assert behind.candidates == alone.candidates  # seeds come from content, not from the layer's position


def test_resolve_rules(models):
    longest = run(build(models, GEN4, resolve="longest"))
    assert longest.answer == max(longest.candidates, key=len)
    shortest = run(build(models, GEN4, resolve="shortest"))
    assert shortest.answer == min(shortest.candidates, key=len)
    first = run(build(models, GEN4))
    assert first.answer == first.candidates[0]
    picks = {run(build(models, GEN4, resolve="random")).answer for _ in range(2)}
    assert len(picks) == 1 and picks <= set(first.candidates)  # seeded: the same pick every time


def test_bad_messages_and_duplicate_names_are_clear_errors(models):
    with pytest.raises(InvalidRequestError, match=r"messages\[0\] must be a dict"):
        run(build(models, GEN4), messages=[{"role": "user"}])
    with pytest.raises(InvalidRequestError, match="repeated: \\['x'\\]"):
        build(models, [{"type": "generate", "name": "x"}, {"type": "generate", "name": "x"}])


def test_single_model_architecture(tiny_llama_dir):
    arch = Architecture.single_model(str(tiny_llama_dir), max_tokens=3, temperature=0.0,
                                     engine={"num_kv_blocks": 1024, "block_size": 8})
    result = run(arch)
    assert len(result.candidates) == 1 and result.usage.calls == 1 and result.usage.completion_tokens <= 3


def test_cli_run_prints_answer_usage_and_writes_the_trace(models, tmp_path, capsys):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"name": "cli", "models": models, "layers": [GEN4, [{"type": "vote", "extract": "text"}]]}))
    trace = tmp_path / "trace.jsonl"
    cache = tmp_path / "calls.sqlite"
    args = ["run", "--arch", str(spec), "--cache", str(cache), "--trace", str(trace), "Name a colour."]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert out.strip() and "[cli] calls=1 cached=0" in err
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    assert events[0]["event"] == "query" and events[0]["usage"]["calls"] == 1
    call = next(e for e in events if e["event"] == "call")
    assert {"component", "model", "messages", "params", "outputs", "prompt_tokens", "completion_tokens",
            "seconds", "cached"} <= set(call)
    assert main(args) == 0
    out2, err2 = capsys.readouterr()
    assert out2 == out and "calls=0 cached=1" in err2


def test_cli_run_reports_spec_errors_in_one_line(tmp_path, capsys):
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: x\nlayers:\n  - - {type: rank, top_k: zero}\n")
    assert main(["run", "--arch", str(spec), "--no-cache", "hi"]) == 2
    assert "bad.yaml" in capsys.readouterr().err
