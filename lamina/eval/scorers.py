"""Scorers: text match, numeric, math equivalence (math-verify), multiple choice, containment, executed code tests,
LLM judge.

Answers compare by `lamina.answers.equivalent`, the same definition votes use; `contains` by
`lamina.answers.contains`. An example with several acceptable references (`Example.references`) scores 1 when
the answer matches any of them."""
from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lamina.answers import contains, equivalent, math_compare
from lamina.answers.code import called_names
from lamina.answers.extract import extract, extract_code
from lamina.errors import SpecError
from lamina.eval.judge import baseline_answers, judge_score
from lamina.tasks.scorer_spec import ScorerSpec

if TYPE_CHECKING:
    from lamina.backends.base import Backend
    from lamina.tasks.task import Example

# scorer type -> answer kind (lamina.answers.equality) for the scorers that compare an extracted answer
ANSWER_KINDS = {"exact": "exact", "normalized": "text", "numeric": "number", "math": "math", "choice": "choice"}


@dataclass(slots=True)
class Score:
    value: float
    extracted: str | None
    detail: str = ""


@dataclass(slots=True)
class Scorer(ScorerSpec):
    """A task's ScorerSpec that scores: extract with `extract`, then compare with `kind`. `judge` is the judge
    scorer's backend; None builds it from `options` (backend, model) on first use."""
    judge: "Backend | None" = None

    @classmethod
    def from_spec(cls, spec: ScorerSpec, judge: "Backend | None" = None) -> "Scorer":
        return cls(spec.kind, spec.extract, dict(spec.options), judge)

    def prepare(self) -> None:
        """Fail before a run starts when the scorer cannot work (e.g. the judge's baseline run is missing)."""
        if self.kind == "judge":
            if "baseline" not in self.options:
                raise SpecError("the judge scorer needs `baseline`: a previous run's SQLite file")
            baseline_answers(str(self.options["baseline"]))

    async def score(self, text: str, example: "Example", question: str = "") -> Score:
        if self.kind == "code":
            return await asyncio.to_thread(score_code, text, example, **self.options)
        if self.kind == "judge":
            value, detail = await judge_score(text, example, question=question, judge=self.judge, **self.options)
            return Score(value, text, detail)
        answer = extract(text, self.extract, self.options.get("choices", "ABCD"), self.regex())
        references = example.references or [example.reference]
        if self.kind == "math":
            verdicts = [math_compare(answer, reference) for reference in references]
            return Score(float(any(equal for equal, _ in verdicts)), answer, "; ".join(d for _, d in verdicts if d))
        if self.kind == "contains":
            return Score(float(any(contains(answer, reference) for reference in references)), answer)
        kind = ANSWER_KINDS[self.kind]
        return Score(float(any(equivalent(answer, reference, kind) for reference in references)), answer)


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
    """The candidate program: extracted for the names the task needs (its entry point and the names its tests call,
    see `lamina.answers.code`); a HumanEval-style body completion is appended to the task's prompt."""
    prompt, entry = example.inputs.get("prompt"), example.inputs.get("entry_point")
    program = extract_code(text, ([entry] if isinstance(entry, str) else []) + called_names(example.tests))
    if not isinstance(prompt, str) or not entry:
        return program
    if program is None or not re.search(rf"def\s+{re.escape(entry)}\b", program):
        body = program if program is not None else text
        return prompt + body if body.strip() else None
    imports = [line for line in prompt.splitlines() if line.startswith(("import ", "from "))]
    return "\n".join(imports + [program])


def make_scorer(config: str | dict[str, Any], default_extract: str = "auto", source: str = "<task>") -> Scorer:
    """A Scorer from a task's `scorer:` field (see `ScorerSpec.parse`, which names `source` in its errors)."""
    return Scorer.from_spec(ScorerSpec.parse(config, default_extract, source))
