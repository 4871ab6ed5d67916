"""Scorers: text match, numeric, math equivalence (math-verify), multiple choice, executed code tests, LLM judge."""
from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import string
import threading
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from lamina.errors import SpecError
from lamina.answers.extract import extract, extract_code

if TYPE_CHECKING:
    from lamina.tasks.task import Example

SCORERS = ("exact", "normalized", "numeric", "math", "choice", "code", "judge")


@dataclass(slots=True)
class Score:
    value: float
    extracted: str | None
    detail: str = ""


@dataclass(slots=True)
class Scorer:
    """Extract with `extract`, then compare with `kind`; `options` carry kind-specific settings."""
    kind: str
    extract: str = "auto"
    options: dict[str, Any] = field(default_factory=dict)

    def identity(self) -> dict[str, Any]:
        """What a run's scores depend on (type, extractor and options, e.g. the judge's baseline and model), as JSON:
        part of the run identity, so a resumed store never mixes scores from different scorers."""
        return json.loads(json.dumps({"type": self.kind, "extract": self.extract, **self.options}, sort_keys=True,
                                     default=str))

    def prepare(self) -> None:
        """Fail before a run starts when the scorer cannot work (e.g. the judge's baseline run is missing)."""
        if self.kind == "judge":
            from lamina.eval.judge import baseline_answers

            if "baseline" not in self.options:
                raise SpecError("the judge scorer needs `baseline`: a previous run's SQLite file")
            baseline_answers(str(self.options["baseline"]))

    async def score(self, text: str, example: "Example", question: str = "") -> Score:
        if self.kind == "code":
            return await asyncio.to_thread(score_code, text, example, **self.options)
        if self.kind == "judge":
            from lamina.eval.judge import judge_score

            return await judge_score(text, example, question=question, **self.options)
        answer = extract(text, self.extract, self.options.get("choices", "ABCD"))
        if self.kind == "math":
            equal, detail = math_compare(answer, example.reference)
            return Score(float(equal), answer, detail)
        return Score(float(MATCHERS[self.kind](answer, example.reference)), answer)


_PUNCT_TO_SPACE = str.maketrans(string.punctuation, " " * len(string.punctuation))


def normalize(text: str) -> str:
    text = text.lower().translate(_PUNCT_TO_SPACE)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def parse_number(text: str | None) -> Fraction | None:
    if text is None:
        return None
    cleaned = text.strip().replace(",", "").replace("$", "").replace("−", "-").rstrip(".%").strip()
    try:
        return Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        return None


def exact_match(answer: str | None, reference: str) -> bool:
    return answer is not None and answer.strip() == reference.strip()


def normalized_match(answer: str | None, reference: str) -> bool:
    return answer is not None and normalize(answer) == normalize(reference)


def numeric_match(answer: str | None, reference: str, rel_tol: float = 1e-6) -> bool:
    got, want = parse_number(answer), parse_number(reference)
    if got is None or want is None:
        return False
    return abs(got - want) <= rel_tol * max(1, abs(want))


MATH_TIMEOUT_S = 5  # per math-verify step; math-verify's own timeout is whole seconds (SIGALRM)


def math_compare(answer: str | None, reference: str, timeout_s: float | None = None) -> tuple[bool, str]:
    """Equal as numbers, else by math-verify (sympy); a comparison that runs past the timeout counts as not equal.

    math-verify's timeout uses SIGALRM, which only works on the main thread; elsewhere the comparison runs in a
    daemon thread joined with a deadline, so one pathological answer cannot hang an eval (the runaway thread is
    abandoned). Returns (equal, detail)."""
    if answer is None:
        return False, ""
    if numeric_match(answer, reference):
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


def math_match(answer: str | None, reference: str) -> bool:
    return math_compare(answer, reference)[0]


def choice_match(answer: str | None, reference: str) -> bool:
    return answer is not None and answer.strip().upper() == reference.strip().upper()


MATCHERS = {"exact": exact_match, "normalized": normalized_match, "numeric": numeric_match, "math": math_match,
            "choice": choice_match}


def score_code(text: str, example: "Example", timeout_s: float = 5.0, memory_mb: int = 512) -> Score:
    """1.0 when the extracted program passes every test in the sandbox; the pass rate goes in `detail`."""
    from lamina.sandbox import execute_tests

    program, tests = code_program(text, example), example.tests
    if program is None or not tests:
        return Score(0.0, program, "no code found" if program is None else "no tests")
    report = execute_tests(program, tests, timeout_s=timeout_s, memory_mb=memory_mb)
    errors = "; ".join(sorted({r.error for r in report.results if r.error}))[:300]
    return Score(float(report.passed == report.total), program, f"passed {report.passed}/{report.total} {errors}".strip())


def code_program(text: str, example: "Example") -> str | None:
    """The candidate program; a HumanEval-style body completion is appended to the task's prompt."""
    program = extract_code(text)
    prompt, entry = example.inputs.get("prompt"), example.inputs.get("entry_point")
    if not isinstance(prompt, str) or not entry:
        return program
    if program is None or not re.search(rf"def\s+{re.escape(entry)}\b", program):
        body = program if program is not None else text
        return prompt + body if body.strip() else None
    imports = [line for line in prompt.splitlines() if line.startswith(("import ", "from "))]
    return "\n".join(imports + [program])


def make_scorer(config: str | dict[str, Any], default_extract: str = "auto", source: str = "<task>") -> Scorer:
    if isinstance(config, str):
        config = {"type": config}
    options = dict(config)
    kind = options.pop("type", None)
    if kind not in SCORERS:
        raise SpecError(f"{source}: scorer.type must be one of {', '.join(SCORERS)}, got {kind!r}")
    extractor = options.pop("extract", {"code": "code", "choice": "choice"}.get(kind, default_extract))
    return Scorer(kind, extractor, options)
