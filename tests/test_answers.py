"""One answer equality: keys and comparisons per kind, and votes and scorers agreeing on the same pairs."""
from __future__ import annotations

import asyncio
from fractions import Fraction

import pytest

from lamina.answers import answer_key, equivalent, extract, number_key, parse_number
from lamina.eval.scorers import make_scorer
from lamina.spec import VoteSpec
from lamina.tasks.task import Example
from lamina.techniques.base import Candidate, State
from lamina.techniques.vote import Vote


@pytest.mark.parametrize("value, key", [(Fraction(2), "2"), (Fraction(1, 2), "0.5"), (Fraction(-5, 4), "-1.25"),
                                        (Fraction(1, 3), "1/3"), (Fraction(-2, 3), "-2/3"), (Fraction(1, 40), "0.025"),
                                        (Fraction(0), "0")])
def test_number_key_spells_each_value_once(value, key):
    assert number_key(value) == key and parse_number(key) == value


@pytest.mark.parametrize("text, value", [("1,000", 1000), ("$1,234.50", Fraction(246_9, 2)), ("-0", 0), ("50%", 50),
                                         ("1/2", Fraction(1, 2)), ("−3", -3), ("1e3", 1000), ("7.", 7)])
def test_parse_number(text, value):
    assert parse_number(text) == value


@pytest.mark.parametrize("text, value", [
    (r"9{,}500", 9500), (r"\$1,234.50", Fraction(2469, 2)), (r"50\%", 50), (r"\frac{1}{2}", Fraction(1, 2)),
    (r"\dfrac{3}{4}", Fraction(3, 4)), (r"-\tfrac{1}{4}", Fraction(-1, 4)), (r"2\frac{1}{2}", Fraction(5, 2)),
    (r"12\text{ cm}", 12), (r"90^{\circ}", 90), (r"1\,000", 1000), (r"\left(7\right)", 7), ("1.5/2", Fraction(3, 4)),
    (r"2.5\times 10^{-1}", Fraction(1, 4)), ("$18$", 18)])
def test_parse_number_latex(text, value):
    assert parse_number(text) == value


@pytest.mark.parametrize("text", [r"\frac{\sqrt{3}}{2}", r"\text{twelve}", r"x^{\circ}", r"\frac{1}{0}"])
def test_latex_non_numbers(text):
    assert parse_number(text) is None


@pytest.mark.parametrize("reply, reference", [(r"\boxed{$9{,}500}", "9500"), (r"\boxed{\frac{1}{2}}", "0.5"),
                                              (r"The price is \$1,234.50", "1234.5"), (r"\boxed{50\%}", "50"),
                                              (r"\boxed{\text{12 apples}}", "12")])
@pytest.mark.parametrize("extractor", ["number", "auto", "boxed"])
def test_numeric_scorer_reads_latex_numbers(reply, reference, extractor):
    """The numeric scorer agrees with number extraction whichever extractor hands it the answer."""
    if extractor == "boxed" and "boxed" not in reply:
        return
    scorer = make_scorer({"type": "numeric", "extract": extractor})
    assert asyncio.run(scorer.score(reply, Example("q", {}, reference))).value == 1.0


@pytest.mark.parametrize("text", ["1,2,3", "12,34", "abc", "1/0", "", None])
def test_not_a_number(text):
    assert parse_number(text) is None and answer_key(text, "number") is None


# (a, b, kind, equal): the pairs every user of answer equality must agree on
PAIRS = [
    ("1/2", "0.5", "number", True), ("1,000", "1000", "number", True), ("-0", "0", "number", True),
    ("$18", "18.00", "number", True), ("50%", "50", "number", True), ("2", "3", "number", False),
    ("1/3", "0.333333", "number", False), ("twelve", "12", "number", False),
    ("(B)", "B.", "choice", True), ("[C]", "C", "choice", True), ("A", "B", "choice", False),
    ("The  Eiffel-Tower!", "eiffel tower", "text", True), ("an apple", "Apple.", "text", True),
    ("Eiffel", "eiffel tower", "text", False),
    ("def f():\n    return 1   \n\n", "def f():\n    return 1", "code", True),
    ("def f():\n  return 1", "def f():\n    return 1", "code", False),
    (" Paris ", "Paris", "exact", True), ("paris", "Paris", "exact", False),
    ("1/2", "0.5", "auto", True), ("Paris.", "paris", "auto", True), ("x+1", "x-1", "auto", False),
    ("\\frac{1}{2}", "0.5", "math", True), ("x + 1", "x+1", "math", True), ("x+1", "x-1", "math", False),
]


@pytest.mark.parametrize("a, b, kind, equal", PAIRS)
def test_equivalent_and_keys_agree(a, b, kind, equal):
    assert equivalent(a, b, kind) is equal and equivalent(b, a, kind) is equal
    if kind != "math" or equal is False:  # math-verify proves equalities keys cannot see (\frac{1}{2} = 0.5)
        assert (answer_key(a, kind) == answer_key(b, kind)) is equal
    assert not equivalent(None, b, kind) and not equivalent(a, None, kind)


SCORER_OF = {"number": "numeric", "choice": "choice", "text": "normalized", "exact": "exact"}
EXTRACTOR_OF = {"number": "number", "choice": "choice", "text": "text", "exact": "text"}


@pytest.mark.parametrize("a, b, kind, equal", [p for p in PAIRS if p[2] in ("number", "choice", "text")])
def test_scorer_and_vote_grouping_agree(a, b, kind, equal):
    """The scorer calls `a` right against reference `b` exactly when a vote puts `a` and `b` in one group."""
    scorer = make_scorer({"type": SCORER_OF[kind], "extract": EXTRACTOR_OF[kind]})
    scored = asyncio.run(scorer.score(a, Example("q", {}, b))).value
    key_a, key_b = extract(a, EXTRACTOR_OF[kind]), extract(b, EXTRACTOR_OF[kind])
    grouped = key_a is not None and key_a == key_b
    assert scored == float(equal) and grouped is equal


def test_choice_letters_compare_case_insensitively():
    assert answer_key("(b)", "choice") == "B" and equivalent("b.", "B", "choice")


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown answer kind 'fuzzy'; known: exact, text"):
        answer_key("1", "fuzzy")


class Notes:
    """The one thing Vote asks of its caller: somewhere to note what it decided."""

    def __init__(self) -> None:
        self.events: list[dict] = []

    def note(self, component: str, **event) -> None:
        self.events.append(event)


def run_vote(texts: list[str], extract_as: str = "number", keep: str = "all"):
    state = State([{"role": "user", "content": "q"}], Notes(), [Candidate(t, "given") for t in texts])  # type: ignore[arg-type]
    out = asyncio.run(Vote(VoteSpec(type="vote", keep=keep, extract=extract_as), "vote").run(state))
    return out, state.calls.events[-1]


def test_vote_groups_equal_values():
    out, event = run_vote(["0.5", "1/2", "2", "2"])
    assert event["votes"] == {"0.5": 2.0, "2": 2.0} and event["winner"] == "0.5"  # a tie goes to the first seen
    assert [(c.text, c.answer) for c in out] == [("0.5", "0.5"), ("1/2", "0.5"), ("2", "2"), ("2", "2")]
    winners, _ = run_vote(["2", "1,000", "$1000", "so 1000.", "2"], keep="winner")
    assert [c.text for c in winners] == ["1,000", "$1000", "so 1000."]


def test_vote_groups_choices_and_text_by_the_same_rules():
    out, event = run_vote(["The answer is (b)", "B", "answer: A"], extract_as="choice")
    assert event["votes"] == {"B": 2.0, "A": 1.0} and [c.text for c in out][:2] == ["The answer is (b)", "B"]
    _, event = run_vote(["An apple.", "apple", "a pear"], extract_as="text")
    assert event["votes"] == {"apple": 2.0, "pear": 1.0}
