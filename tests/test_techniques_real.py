"""Every technique, and every shipped example spec, on the real embedded SmolLM2-135M (short max_tokens)."""
from __future__ import annotations

from pathlib import Path

import pytest

from lamina.config_file import read_spec_file

from tests.archs import run_spec

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).parent.parent / "examples" / "architectures"
REAL = {"small": {"model": "default", "engine": {"kv_cache_memory_gb": 0.25}, "params": {"max_tokens": 12}}}
ADD_TASK = [{"role": "user", "content": "Write a Python function add(a, b) that returns the sum of a and b."}]
ADD_TESTS = ["assert add(2, 3) == 5", "assert add(-1, 1) == 0"]


def run(spec: dict, messages, tests=None):
    return run_spec(spec, messages, tests=tests)


def calls(result, component):
    return result.usage.by_component[component].calls


def samples(result):
    return [c.text for c in result.first_layer_samples()]


def notes(result, component):
    """What a technique noted in the trace (tests it wrote, pass rates, fallbacks)."""
    return [e for e in result.trace if e["event"] == "note" and e["component"] == component]


def shortened(path: Path, max_tokens: int = 8) -> dict:
    """An example spec with every max_tokens cut down (judges too: their built-in lengths win over the alias's)
    so the whole file runs in seconds."""
    spec = read_spec_file(path)
    for alias in spec["models"].values():
        alias.setdefault("params", {})["max_tokens"] = max_tokens
    for layer in spec["layers"]:
        for comp in layer:
            comp["max_tokens"] = max_tokens
    return spec


def test_generate_critique_rank_fuse_on_the_real_model():
    spec = {"name": "real", "models": REAL, "layers": [
        [{"type": "generate", "samples": 3, "temperature": 0.9, "name": "gen"}],
        [{"type": "critique", "name": "crit"}],
        [{"type": "rank", "top_k": 2, "use_critiques": True, "name": "rank"}],
        [{"type": "fuse", "name": "fuse", "max_tokens": 16}]]}
    result = run(spec, [{"role": "user", "content": "Give one tip for learning to cook."}])
    assert calls(result, "gen") == 1 and len(set(samples(result))) == 3  # one request, three different samples
    assert calls(result, "crit") == 3 and calls(result, "rank") == 1 and calls(result, "fuse") == 1
    assert all(c.critique for c in result.layers[1].candidates)
    assert result.answer.strip() and result.final[0].source == "fuse"
    assert result.usage.calls == 6 and result.usage.completion_tokens > 6


@pytest.mark.parametrize("example", ["sample_vote", "generate_rank_fuse", "critique_fuse", "verify_reward",
                                     "first_finish"])
def test_shipped_examples_run_on_the_embedded_model(example):
    spec = shortened(EXAMPLES / f"{example}.yaml")
    result = run(spec, [{"role": "user", "content": "What is 3 + 4? Answer with a number."}])
    assert result.answer.strip() and result.candidates and result.usage.calls >= 1
    assert all(m["model"] == "default" for m in spec["models"].values())


def test_code_example_executes_real_samples_against_the_task_tests():
    spec = shortened(EXAMPLES / "code_unit_tests.yaml", max_tokens=40)
    result = run(spec, ADD_TASK, ADD_TESTS)
    (note,) = [e for e in result.trace if e["event"] == "note" and "pass_rates" in e]
    assert note["executed"] is True and note["tests"] == ADD_TESTS
    rates = [c.pass_rate for c in result.final]
    assert len(rates) == 4 and rates == sorted(rates, reverse=True)
    assert rates[0] == 1.0  # SmolLM2 writes `return a + b` in at least one of 4 samples


def test_unit_test_writes_its_own_tests_with_the_model():
    spec = {"name": "ut", "models": REAL, "layers": [
        [{"type": "generate", "samples": 2, "max_tokens": 40, "name": "gen"}],
        [{"type": "unit_test", "source": "generate", "num_tests": 3, "max_tokens": 64, "name": "ut"}]]}
    result = run(spec, ADD_TASK)
    assert calls(result, "ut") == 1
    written = notes(result, "ut")
    tests = next((e["tests"] for e in written if "tests" in e), None)
    assert not any(e.get("fallback") == "no tests" for e in written), written
    assert tests and len(tests) <= 3 and any("add(" in t for t in tests)  # the model wrote asserts about add()
    (executed,) = [e for e in written if "pass_rates" in e]
    assert executed["executed"] is True and len(executed["pass_rates"]) == 2
    assert len(result.candidates) == 2


MATH = [{"role": "user", "content": "What is 3 + 4? Answer with a number."}]


@pytest.mark.parametrize("method,rank_calls", [("pairwise", 3), ("reward", 3)])
def test_rank_pairwise_and_by_reward_on_the_real_model(method, rank_calls):
    spec = {"name": "rank", "models": REAL, "layers": [
        [{"type": "generate", "samples": 3, "temperature": 0.9, "name": "gen"}],
        [{"type": "rank", "method": method, "top_k": 2, "name": "rank"}]]}
    result = run(spec, MATH)
    assert len(result.candidates) == 2 and set(result.candidates) <= set(samples(result))
    assert calls(result, "rank") == rank_calls


def test_reward_by_verdict_logprob_scores_every_candidate_on_the_real_model():
    spec = {"name": "lp", "models": REAL, "layers": [
        [{"type": "generate", "samples": 3, "temperature": 0.9}],
        [{"type": "reward", "mode": "logprob", "name": "rw"}]]}
    result = run(spec, MATH)
    scores = [c.score for c in result.final]
    assert len(scores) == 3 and all(s is not None and 0.0 < s < 1.0 for s in scores)  # SmolLM2 says yes/no
    assert scores == sorted(scores, reverse=True)
    assert result.usage.by_component["rw"].completion_tokens == 3  # one verdict token per candidate


def test_reward_judge_rates_on_the_real_model():
    spec = {"name": "judge", "models": REAL, "layers": [
        [{"type": "generate", "samples": 2, "temperature": 0.9}],
        [{"type": "reward", "mode": "judge", "name": "rw"}]]}
    result = run(spec, MATH)
    assert calls(result, "rw") == 2 and len(result.final) == 2
    scores = [c.score for c in result.final]
    assert all(s is not None and 1 <= s <= 10 for s in scores), notes(result, "rw")  # SmolLM2 replies a number
    assert scores == sorted(scores, reverse=True)


def test_best_of_majority_on_real_samples():
    spec = {"name": "vote", "models": REAL, "layers": [
        [{"type": "generate", "samples": 8, "temperature": 0.8, "name": "gen", "logprobs": 1}],
        [{"type": "vote", "method": "best_of_majority", "extract": "number", "keep": "all"}]]}
    result = run(spec, MATH)
    answers = [c.answer for c in result.final]
    assert answers[0] is not None and sorted(result.candidates) == sorted(samples(result))
    winners = [c for c in result.final if c.answer == answers[0]]
    assert result.final[: len(winners)] == winners  # the majority's members come first
    assert all(answers.count(answers[0]) >= answers.count(a) for a in answers if a is not None)
    logprobs = [c.mean_logprob for c in winners]
    assert None not in logprobs and logprobs == sorted(logprobs, reverse=True)  # the most likely member first
    assert len(winners) >= 2


def test_inverse_entropy_vote_on_real_samples():
    spec = {"name": "vote", "models": REAL, "layers": [
        [{"type": "generate", "samples": 4, "temperature": 0.8, "name": "gen", "logprobs": 1}],
        [{"type": "vote", "method": "inverse_entropy", "extract": "number", "keep": "all"}]]}
    result = run(spec, MATH)
    assert result.candidates and set(result.candidates) <= set(samples(result))
    assert all(c.mean_entropy is not None and c.mean_entropy > 0 for c in result.final)


def test_unit_test_judged_by_the_real_model_for_prose():
    spec = {"name": "prose", "models": REAL, "layers": [
        [{"type": "generate", "samples": 2, "temperature": 0.9}],
        [{"type": "unit_test", "mode": "auto", "name": "ut", "max_tokens": 4}]]}
    result = run(spec, MATH, ["mentions the number 7", "is one sentence"])
    assert calls(result, "ut") == 4  # 2 candidates x 2 given checks, judged (not executed)
    rates = [c.pass_rate for c in result.final]
    assert all(r in (0.0, 0.5, 1.0) for r in rates) and rates == sorted(rates, reverse=True)
