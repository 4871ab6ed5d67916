"""When two answers are the same answer: the one definition that votes, scorers and verifiers share.

An answer *kind* says how answers compare:

| kind     | equal when                                                                                      |
|----------|-------------------------------------------------------------------------------------------------|
| `exact`  | the strings are equal after stripping surrounding whitespace                                    |
| `text`   | equal after the task normalisation: lowercase, punctuation to spaces, articles dropped         |
| `number` | both are numbers of the same value: `1/2` = `0.5`, `1,000` = `1000`, `-0` = `0`, `$5` = `5` = `5%` |
|          | (`$`, thousands commas, a trailing `%` or `.` are dropped; LaTeX forms read: `9{,}500`,          |
|          | `\\frac{1}{2}`, `\\$5`, `50\\%`, `90^\\circ`; unit words after the number dropped: `12 apples`);   |
|          | a non-number equals nothing                                                                      |
| `math`   | numbers by value, else the same text without whitespace and outer `$`/`.`, else when math-verify |
|          | (sympy) proves them equal                                                                       |
| `choice` | the same option letter, case-insensitive, brackets and a trailing dot dropped (`(b)` = `B`)     |
| `code`   | the same lines after dropping blank lines and trailing whitespace                               |
| `auto`   | numbers by value; anything else lowercase with whitespace collapsed and outer `$ .!*` dropped    |

`answer_key(answer, kind)` is a canonical string such that equal keys mean equal answers (for every kind but
`math`, equal answers also have equal keys), so votes group by it. `equivalent(a, b, kind)` is the comparison
scorers use; for `math` it also tries math-verify, which keys cannot express. `contains(answer, reference)` (the
reference's words appear in the answer) is a scorer's test, not an equality: votes never group by it.
"""
from __future__ import annotations

import logging
import math
import re
import string
import threading
from fractions import Fraction

from lamina.answers.latex import plain_number_text

KINDS = ("exact", "text", "number", "math", "choice", "code", "auto")

_PUNCT_TO_SPACE = str.maketrans(string.punctuation, " " * len(string.punctuation))
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_NUMBER_THEN_WORDS = re.compile(r"\s*([-−$]*\d[\d.,/%]*)\s+[^\W\d_][^\d]*")
MATH_TIMEOUT_S = 5  # per math-verify step; math-verify's own timeout is whole seconds (SIGALRM)


def normalize_text(text: str) -> str:
    """The task normalisation (SQuAD style): lowercase, punctuation to spaces, articles dropped, whitespace
    collapsed."""
    text = text.lower().translate(_PUNCT_TO_SPACE)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def parse_number(text: str | None) -> Fraction | None:
    """The exact value of a written number (`1,000`, `$18`, `-3.5`, `1/2`, `1.5/2`, `50%` as 50, `1e3`, `(7)`),
    LaTeX forms included (`9{,}500`, `\\dfrac{3}{4}`, `\\$5`, `50\\%`, `90^\\circ`: `lamina.answers.latex`), or None."""
    if text is None:
        return None
    cleaned = _THOUSANDS.sub("", plain_number_text(text.strip())).replace("$", "").replace("−", "-")
    cleaned = cleaned.rstrip(".%").strip()
    if cleaned.startswith("(") and cleaned.endswith(")"):
        cleaned = cleaned[1:-1].strip()
    top, slash, bottom = cleaned.partition("/")
    try:
        return Fraction(top) / Fraction(bottom) if slash and "/" not in bottom else Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        return None


def number_key(value: Fraction) -> str:
    """A canonical spelling of a value: `2`, `0.5`, `-1.25`, else `p/q` (`1/3`) when the decimal does not end."""
    if value.denominator == 1:
        return str(value.numerator)
    rest = value.denominator
    for prime in (2, 5):
        while rest % prime == 0:
            rest //= prime
    if rest != 1:
        return f"{value.numerator}/{value.denominator}"
    digits = 0
    while (value * 10 ** digits).denominator != 1:
        digits += 1
    sign, whole = ("-" if value < 0 else ""), abs(value.numerator) * 10 ** digits // value.denominator
    text = str(whole).rjust(digits + 1, "0")
    return f"{sign}{text[:-digits]}.{text[-digits:]}"


def answer_key(answer: str | None, kind: str = "auto") -> str | None:
    """The canonical form of `answer` under `kind` (see the module table); None when there is no answer under it
    (None or empty, or a non-number for `number`). Raises ValueError for an unknown kind."""
    if answer is None:
        return None
    if kind == "exact":
        key = answer.strip()
    elif kind == "text":
        key = normalize_text(answer)
    elif kind == "choice":
        key = answer.strip().strip("()[] .").upper()
    elif kind == "code":
        key = "\n".join(line.rstrip() for line in answer.strip().splitlines() if line.strip())
    elif kind in ("number", "math", "auto"):
        value = parse_number(answer)
        if value is None and kind == "number":  # a number then unit words: `12 apples`, `\\text{5 cm}`
            unit = _NUMBER_THEN_WORDS.fullmatch(plain_number_text(answer))
            value = parse_number(unit.group(1)) if unit else None
        if value is not None:
            return number_key(value)
        if kind == "number":
            return None
        if kind == "math":
            key = re.sub(r"\s+", "", answer).strip("$.")
        else:
            key = re.sub(r"\s+", " ", answer.strip().lower()).strip(" .!*$")
    else:
        raise ValueError(f"unknown answer kind {kind!r}; known: {', '.join(KINDS)}")
    return key or None


def equivalent(answer: str | None, reference: str | None, kind: str = "auto") -> bool:
    """Whether two answers are the same under `kind`; a missing answer equals nothing."""
    if kind == "math":
        return answer is not None and reference is not None and math_compare(answer, reference)[0]
    key = answer_key(answer, kind)
    return key is not None and key == answer_key(reference, kind)


def contains(answer: str | None, reference: str | None) -> bool:
    """Whether `reference` appears in `answer` as whole words after the task normalisation (lowercase, punctuation
    and articles dropped; HELM's quasi-match, simple-evals' normalised containment): "The capital of France is
    Paris." contains "paris" and "the Paris", "Parisian" does not contain "Paris"; an empty reference is in nothing."""
    wanted = normalize_text(reference or "")
    return bool(wanted) and answer is not None and f" {wanted} " in f" {normalize_text(answer)} "


def math_compare(answer: str | None, reference: str, timeout_s: float | None = None) -> tuple[bool, str]:
    """Equal as keys (numbers by value), else by math-verify (sympy); a comparison that runs past the timeout counts
    as not equal.

    math-verify's timeout uses SIGALRM, which only works on the main thread; elsewhere the comparison runs in a
    daemon thread joined with a deadline, so one pathological answer cannot hang an eval (the runaway thread is
    abandoned). Returns (equal, detail)."""
    if answer is None:
        return False, ""
    key = answer_key(answer, "math")
    if key is not None and key == answer_key(reference, "math"):
        return True, ""
    timeout = MATH_TIMEOUT_S if timeout_s is None else timeout_s
    if threading.current_thread() is threading.main_thread():
        return _math_verify(answer, reference, max(1, math.ceil(timeout))), ""
    outcome: list[tuple[bool, BaseException | None]] = []

    def work() -> None:
        try:
            outcome.append((_math_verify(answer, reference, None), None))
        except BaseException as exc:  # re-raised on the caller's thread
            outcome.append((False, exc))

    worker = threading.Thread(target=work, name="math-verify", daemon=True)
    worker.start()
    worker.join(2 * timeout)  # parse and verify, each allowed `timeout` on the main thread
    if not outcome:
        return False, f"math-verify timed out after {2 * timeout:g}s; scored as not equal"
    equal, error = outcome[0]
    if error is not None:
        raise error
    return equal, ""


def _math_verify(answer: str, reference: str, timeout: int | None) -> bool:
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    gold = parse(f"${reference}$", parsing_timeout=timeout)
    pred = parse(answer if "$" in answer else f"${answer}$", parsing_timeout=timeout)
    return bool(gold and pred and verify(gold, pred, timeout_seconds=timeout))
