"""Scorers on known right and wrong answers; code is really executed in the sandbox."""
from __future__ import annotations

import asyncio

import pytest

from lamina.answers import contains, equivalent, extract_raw, parse_number
from lamina.errors import SpecError
from lamina.eval.judge import parse_verdict
from lamina.eval.scorers import code_program, make_scorer
from lamina.tasks.task import Example


def score(kind, text, example):
    return asyncio.run(make_scorer(kind).score(text, example))


def test_exact_and_normalized():
    assert equivalent(" Paris ", "Paris", "exact") and not equivalent("paris", "Paris", "exact")
    assert not equivalent(None, "x", "exact")
    assert equivalent("The  Eiffel-Tower!", "eiffel tower", "text")
    assert not equivalent("Eiffel", "eiffel tower", "text")


@pytest.mark.parametrize("answer, reference, ok", [
    ("12", "12", True), ("12.0", "12", True), ("1,234", "1234", True), ("$18", "18", True),
    ("0.5", "1/2", True), ("-3", "3", False), ("13", "12", False), ("twelve", "12", False), (None, "1", False),
])
def test_numeric(answer, reference, ok):
    assert equivalent(answer, reference, "number") is ok


def test_parse_number():
    assert parse_number("3/4") == parse_number("0.75")
    assert parse_number("1/0") is None and parse_number("abc") is None


@pytest.mark.parametrize("answer, reference, ok", [
    ("\\frac{1}{2}", "0.5", True), ("\\sqrt{4}", "2", True), ("2x+2", "2(x+1)", True), ("70", "70", True),
    ("\\frac{1}{3}", "0.5", False), ("x^2", "2x", False), (None, "1", False),
])
def test_math_equivalence(answer, reference, ok):
    assert equivalent(answer, reference, "math") is ok


def test_math_verify_off_the_main_thread_has_a_deadline(monkeypatch):
    """math-verify's own timeout needs SIGALRM (main thread only); elsewhere a stuck comparison must not hang."""
    import threading

    import math_verify

    from lamina.answers import equality

    release = threading.Event()

    def stuck_verify(*args, **kwargs):
        release.wait(30)
        return True

    monkeypatch.setattr(math_verify, "verify", stuck_verify)
    monkeypatch.setattr(equality, "MATH_TIMEOUT_S", 0.1)
    out = []
    worker = threading.Thread(target=lambda: out.append(score("math", "The answer is $x^2$", Example("q", {}, "y^2"))))
    try:
        worker.start()
        worker.join(5)
        assert out, "math scoring hung off the main thread"
        assert out[0].value == 0.0 and "timed out" in out[0].detail
    finally:
        release.set()
        worker.join()
    assert equivalent("12.0", "12", "math")  # the numeric fast path never reaches math-verify


def test_choice():
    assert equivalent("b", "B", "choice") and not equivalent("C", "B", "choice")
    assert not equivalent(None, "B", "choice")
    ex = Example("q", {}, "C")
    assert score({"type": "choice"}, "Thinking... The answer is (C).", ex).value == 1.0
    assert score({"type": "choice"}, "The answer is A", ex).value == 0.0


def test_numeric_scorer_extracts_then_compares():
    ex = Example("q", {}, "12")
    right = score("numeric", "7 + 5 = 12", ex)
    assert (right.value, right.extracted) == (1.0, "12")
    assert score("numeric", "7 + 5 = 13", ex).value == 0.0
    assert score("numeric", "I don't know", ex).value == 0.0


CODE_EX = Example("c", {"entry_point": "double"}, "", ["assert double(2) == 4", "assert double(-1) == -2"])


def test_code_scorer_executes_tests():
    good = score("code", "Sure:\n```python\ndef double(x):\n    return 2 * x\n```", CODE_EX)
    assert good.value == 1.0 and good.detail.startswith("passed 2/2")
    half = score("code", "```python\ndef double(x):\n    return x + 2\n```", CODE_EX)
    assert half.value == 0.0 and half.detail.startswith("passed 1/2")
    broken = score("code", "```python\ndef double(x) return\n```", CODE_EX)
    assert broken.value == 0.0 and "SyntaxError" in broken.detail
    none = score("code", "I cannot write code.", CODE_EX)
    assert none.value == 0.0 and none.detail == "no code found"


@pytest.mark.parametrize("reply", [
    "def double(x):\n    return 2 * x\n```",                                  # bare function, lone closing fence
    "Here is the function you asked for:\ndef double(x):\n    return 2 * x",  # a prose line before a bare def
    "```python\ndef double(x):\n    return 2 * x\n\nassert double(1) == 3  # the model's own wrong test\n```",
])
def test_code_scorer_runs_the_program_of_each_reply_shape(reply):
    """Issue 11's code shapes pass the example's tests in the sandbox."""
    result = score("code", reply, CODE_EX)
    assert (result.value, result.detail) == (1.0, "passed 2/2")


def test_code_program_keeps_the_names_tests_call():
    ex = Example("c", {"entry_point": "double"}, "", ["assert double(2) == 4", "assert half(4) == 2"])
    reply = "```python\ndef double(x):\n    return 2 * x\n\ndef half(x):\n    return x // 2\n\nprint(half(9))\n```"
    assert code_program(reply, ex) == "def double(x):\n    return 2 * x\n\ndef half(x):\n    return x // 2"
    assert score("code", reply, ex).value == 1.0


def test_code_program_completes_humaneval_style_bodies():
    ex = Example("h", {"prompt": "from typing import List\n\ndef inc(xs: List[int]) -> List[int]:\n",
                       "entry_point": "inc"}, "", ["assert inc([1]) == [2]"])
    body = "    return [x + 1 for x in xs]\n"
    assert code_program(body, ex).startswith("from typing import List")
    assert score({"type": "code"}, body, ex).value == 1.0
    full = "```python\ndef inc(xs: List[int]) -> List[int]:\n    return [x + 1 for x in xs]\n```"
    program = code_program(full, ex)
    assert program.splitlines()[0] == "from typing import List" and score("code", full, ex).value == 1.0


def test_judge_verdict_parsing():
    assert parse_verdict("A") == "A" and parse_verdict(" b.") == "B"
    assert parse_verdict("It's a tie") == "tie" and parse_verdict("neither") is None


def test_make_scorer_errors_name_the_source():
    with pytest.raises(SpecError, match="my.yaml: scorer.type must be one of exact, .*got 'bogus'"):
        make_scorer({"type": "bogus"}, source="my.yaml")
    with pytest.raises(SpecError, match="my.yaml: scorer.extract must be one of auto, .*got 'last'"):
        make_scorer({"type": "numeric", "extract": "last"}, source="my.yaml")
    assert make_scorer("code").extract == "code" and make_scorer({"type": "choice"}).extract == "choice"


@pytest.mark.parametrize("answer, reference, ok", [
    ("The capital of France is Paris.", "Paris", True), ("PARIS!", "paris", True),
    ("It is the Paris of the east", "the Paris", True),   # articles dropped on both sides
    ("New York City", "york", True), ("Parisian cafés", "Paris", False), ("I am not sure.", "Paris", False),
    ("Saint-Louis", "saint louis", True), ("anything", "", False), (None, "Paris", False),
])
def test_contains(answer, reference, ok):
    assert contains(answer, reference) is ok


def test_contains_scorer_takes_the_whole_reply_and_any_reference():
    ex = Example("q", {}, "George Washington", references=["George Washington", "Washington"])
    assert score("contains", "I believe it was Washington.", ex).value == 1.0
    assert score("contains", "It was George.", ex).value == 0.0
    phrase = {"type": "contains", "extract": "phrase"}
    assert score(phrase, "Paris, then... The answer is Rome.", Example("q", {}, "Paris")).value == 0.0
    assert score({"type": "exact"}, "Washington", ex).value == 1.0  # every comparing scorer accepts any reference


@pytest.mark.parametrize("config, text, want", [
    ({"pattern": r"ANSWER: (\w+)"}, "ANSWER: x ... ANSWER: y", "y"),                 # last match by default
    ({"pattern": r"ANSWER: (\w+)", "select": "first"}, "ANSWER: x ... ANSWER: y", "x"),
    ({"pattern": r"(?P<num>-?\d+) apples"}, "3 pears and 12 apples", "12"),
    ({"pattern": r"(?P<num>-?\d+) (?P<unit>\w+)", "group": "unit"}, "3 pears", "pears"),
    ({"pattern": r"\d+"}, "a 1 b 22", "22"),                                         # no group: the whole match
    ({"pattern": r"#### (.*)", "group": 1}, "no marker", None),
])
def test_regex_extractor(config, text, want):
    scorer = make_scorer({"type": "exact", "extract": "regex", **config})
    assert scorer.regex() is not None and extract_raw(text, "regex", regex=scorer.regex()) == want


def test_regex_extractor_needs_its_pattern():
    with pytest.raises(ValueError, match="needs a pattern"):
        extract_raw("x", "regex")
