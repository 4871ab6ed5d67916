"""Every technique branch on a scripted backend (canned replies, every call's messages and sampling params
recorded): verdicts, rankings, scores parsed or not, fallbacks, votes, unit tests, first_finish, precedence."""
from __future__ import annotations

import pytest

from tests.archs import run_spec
from tests.scripted import ScriptedBackend

QUESTION = [{"role": "user", "content": "What is 2 + 2?"}]
MODELS = {"m": {"model": "scripted"}}

VERIFY = "Check the reasoning of the response"
LISTWISE = "Rank the responses from best to worst"
PAIRWISE = "Which response is better?"
CRITIQUE = "strengths and the weaknesses"
JUDGE = "Rate how good and correct"
VERDICT = "Is the response correct? Answer Yes or No."
FUSE = "write one best answer"
WRITE_TESTS = "Python assert statements"
CHECK = "Does the response satisfy this check"


def run(layers, rules=None, *, models=MODELS, tests=None, cache=False, backend=None, **extra):
    """Run `layers` on a scripted backend; returns (result, backend)."""
    backend = backend or ScriptedBackend(rules)
    spec = {"name": "scripted", "models": models, "layers": layers, **extra}
    return run_spec(spec, QUESTION, tests=tests, cache=cache, backends={"m": backend}), backend


def given(*texts):
    """A first layer whose generate draws exactly these samples."""
    return [{"type": "generate", "samples": len(texts), "name": "gen"}], {"2 + 2?": list(texts)}


def settings(call):
    p = call.params
    return {"temperature": p.temperature, "top_p": p.top_p, "max_tokens": p.max_tokens, "stop": p.stop}


def test_judges_keep_their_built_in_settings_over_the_alias_generation_defaults():
    models = {"m": {"model": "scripted", "params": {"temperature": 0.8, "top_p": 0.9, "max_tokens": 300,
                                                    "stop": ["###"]}}}
    layers = [[{"type": "generate", "samples": 2}], [{"type": "verify"}], [{"type": "critique"}],
              [{"type": "rank"}], [{"type": "reward"}], [{"type": "unit_test", "source": "generate"}],
              [{"type": "verify", "temperature": 0.3, "max_tokens": 20, "name": "set"}], [{"type": "fuse"}]]
    rules = {VERIFY: "Verdict: correct", CRITIQUE: "fine", LISTWISE: "[2] > [1]", JUDGE: "7",
             WRITE_TESTS: "assert True", FUSE: "4"}
    result, backend = run(layers, rules, models=models)
    alias = {"top_p": 0.9, "stop": ["###"]}  # what no technique fixes still comes from the alias
    generative = {**alias, "temperature": 0.8, "max_tokens": 300}
    assert settings(backend.calls[0]) == generative  # generate
    assert settings(backend.made(FUSE)[0]) == generative
    for key, max_tokens in ((CRITIQUE, 96), (LISTWISE, 32), (JUDGE, 8), (WRITE_TESTS, 128)):
        assert {settings(c)["max_tokens"] for c in backend.made(key)} == {max_tokens}, key
        assert all(settings(c) == {**alias, "temperature": 0.0, "max_tokens": max_tokens} for c in backend.made(key))
    first, second = backend.made(VERIFY)[:2], backend.made(VERIFY)[2:]
    assert all(settings(c) == {**alias, "temperature": 0.0, "max_tokens": 64} for c in first)
    assert all(settings(c) == {**alias, "temperature": 0.3, "max_tokens": 20} for c in second)  # the component wins
    assert result.answer == "4"
