"""Every technique, and every shipped example spec, on the real embedded SmolLM2-135M (short max_tokens)."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from lamina.architecture import Architecture
from lamina.spec import read_spec_file

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).parent.parent / "examples" / "architectures"
REAL = {"small": {"model": "default", "engine": {"kv_cache_memory_gb": 0.25}, "params": {"max_tokens": 12}}}
ADD_TASK = [{"role": "user", "content": "Write a Python function add(a, b) that returns the sum of a and b."}]
ADD_TESTS = ["assert add(2, 3) == 5", "assert add(-1, 1) == 0"]


def run(spec: dict, messages, tests=None):
    arch = Architecture.from_spec(spec, cache=False)

    async def go():
        try:
            return await arch.run(messages, tests=tests)
        finally:
            await arch.aclose()

    return asyncio.run(go())


def calls(result, component):
    return [e for e in result.trace if e["event"] == "call" and e["component"] == component]


def shortened(path: Path, max_tokens: int = 8) -> dict:
    """An example spec with every max_tokens cut down so the whole file runs in seconds."""
    spec = read_spec_file(path)
    for alias in spec["models"].values():
        alias.setdefault("params", {})["max_tokens"] = max_tokens
    for layer in spec["layers"]:
        for comp in layer:
            if "max_tokens" in comp:
                comp["max_tokens"] = max_tokens
    return spec


def test_generate_critique_rank_fuse_on_the_real_model():
    spec = {"name": "real", "models": REAL, "layers": [
        [{"type": "generate", "samples": 3, "temperature": 0.9, "name": "gen"}],
        [{"type": "critique", "name": "crit"}],
        [{"type": "rank", "top_k": 2, "use_critiques": True, "name": "rank"}],
        [{"type": "fuse", "name": "fuse", "max_tokens": 16}]]}
    result = run(spec, [{"role": "user", "content": "Give one tip for learning to cook."}])
    (gen,) = calls(result, "gen")
    assert gen["params"]["n"] == 3 and len(set(gen["outputs"])) == 3  # one request, three different samples
    assert len(calls(result, "crit")) == 3 and len(calls(result, "rank")) == 1 and len(calls(result, "fuse")) == 1
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
    assert note["executed"] is True and note["tests"] == ADD_TESTS and len(note["pass_rates"]) == 4
    assert [c.pass_rate for c in result.final] == sorted(note["pass_rates"], reverse=True)
    assert max(note["pass_rates"]) == 1.0  # SmolLM2 writes `return a + b` in at least one of 4 samples


def test_unit_test_writes_its_own_tests_with_the_model():
    spec = {"name": "ut", "models": REAL, "layers": [
        [{"type": "generate", "samples": 2, "max_tokens": 40, "name": "gen"}],
        [{"type": "unit_test", "source": "generate", "num_tests": 3, "max_tokens": 64, "name": "ut"}]]}
    result = run(spec, ADD_TASK)
    assert len(calls(result, "ut")) == 1
    written = [e for e in result.trace if e["event"] == "note" and e.get("component") == "ut"]
    tests = next((e["tests"] for e in written if "tests" in e), None)
    fallback = any(e.get("fallback") == "no tests" for e in written)
    assert fallback or (tests and all(t.startswith("assert") for t in tests))
    assert len(result.candidates) == 2
