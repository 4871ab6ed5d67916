"""unit_test: tests from the task or written by a model; code candidates are EXECUTED against them in the
sandbox, prose candidates are judged per test by a model; candidates are then kept/sorted by pass rate."""
from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Literal

from pydantic import Field

from lamina.budget import Estimate
from lamina.errors import InvalidRequestError
from lamina.techniques.base import Candidate, State, Technique
from lamina.rewards import Response, TestsPassed
from lamina.techniques.parse import parse_tests, parse_verdict
from lamina.techniques.spec_base import Component

WRITE_TESTS_PROMPT = ("Task: {query}\n\nWrite {n} Python assert statements that a correct solution must pass, "
                      "one per line, e.g. assert f(2) == 4. Reply with the asserts only.")
WRITE_CHECKS_PROMPT = "Task: {query}\n\nWrite {n} short checks that a good answer must satisfy, one per line."
JUDGE_TEST_PROMPT = ("Task: {query}\n\nResponse: {response}\n\nDoes the response satisfy this check: {test}\n"
                     "Answer Yes or No.")


def looks_like_code_tests(tests: list[str]) -> bool:
    return bool(tests) and all(t.lstrip().startswith("assert") for t in tests)


class UnitTestSpec(Component):
    type: Literal["unit_test"]
    source: Literal["auto", "given", "generate"] = "auto"  # auto: the task's tests if it has them, else generate
    num_tests: int = Field(3, ge=1, le=20)
    mode: Literal["auto", "execute", "judge"] = "auto"  # auto: execute when the tests are code (assert ...)
    keep: Literal["sort", "best", "passing"] = "sort"
    timeout_s: float = Field(5.0, gt=0)
    memory_mb: int = Field(512, ge=32)


class UnitTest(Technique):
    kind = "unit_test"
    spec_class = UnitTestSpec
    builtin = {"temperature": 0.0, "max_tokens": 128}
    spec: UnitTestSpec

    async def run(self, state: State) -> list[Candidate]:
        if not state.candidates:
            return []
        tests = await self.tests(state)
        execute = self.spec.mode == "execute" or (self.spec.mode == "auto" and looks_like_code_tests(tests))
        if not tests:
            self.note(state, fallback="no tests", rule="candidates kept in order")
            return list(state.candidates)
        rates = await (self.execute(state, tests) if execute else self.judge(state, tests))
        scored = [replace(c, pass_rate=r) for c, r in zip(state.candidates, rates)]
        self.note(state, tests=tests, executed=execute, pass_rates=rates)
        return self.keep(state, scored)

    async def tests(self, state: State) -> list[str]:
        if self.spec.source in ("auto", "given") and state.tests:
            return list(state.tests)
        if self.spec.source == "given":
            raise InvalidRequestError(f"component {self.name!r} has source=given but the task gave no tests")
        template = WRITE_TESTS_PROMPT if self.spec.mode != "judge" else WRITE_CHECKS_PROMPT
        reply = (await self.ask(state, template.format(query=state.query, n=self.spec.num_tests)))[0].text
        tests = parse_tests(reply, self.spec.num_tests)
        return tests if self.spec.mode == "judge" else [t for t in tests if t.startswith("assert")]

    async def execute(self, state: State, tests: list[str]) -> list[float]:
        checker = TestsPassed(tests, timeout_s=self.spec.timeout_s, memory_mb=self.spec.memory_mb)
        return [float(s or 0.0) for s in await checker.score(state.query, [Response(c.text) for c in state.candidates])]

    async def judge(self, state: State, tests: list[str]) -> list[float]:
        async def one(i: int, cand: Candidate) -> float:
            async def check(k: int, test: str) -> bool:
                prompt = JUDGE_TEST_PROMPT.format(query=state.query, response=cand.text.strip()[:1500], test=test)
                reply = (await self.ask(state, prompt, call_index=1 + i * len(tests) + k, max_tokens=8))[0].text
                return parse_verdict(reply) is True

            passed = await asyncio.gather(*(check(k, t) for k, t in enumerate(tests)))
            return sum(passed) / len(tests)

        return list(await asyncio.gather(*(one(i, c) for i, c in enumerate(state.candidates))))

    def keep(self, state: State, scored: list[Candidate]) -> list[Candidate]:
        ranked = sorted(scored, key=lambda c: -(c.pass_rate or 0.0))
        if self.spec.keep == "best":
            return ranked[:1]
        if self.spec.keep == "passing":
            passing = [c for c in ranked if c.pass_rate == 1.0]
            if not passing:
                self.note(state, fallback="no candidate passed every test", rule="kept all, sorted by pass rate")
            return passing or ranked
        return ranked

    def estimate(self, state: State) -> Estimate:
        if not state.candidates:
            return Estimate()
        need = Estimate()
        if not (self.spec.source in ("auto", "given") and state.tests):
            need = self.per_call_estimate(state, WRITE_TESTS_PROMPT + state.query, 1)
        given = state.tests if self.spec.source != "generate" else None
        judged = self.spec.mode == "judge" or (self.spec.mode == "auto" and bool(given)
                                               and not looks_like_code_tests(given or []))
        if judged:
            longest = max((c.text[:1500] for c in state.candidates), key=len)
            calls = len(state.candidates) * (len(given or []) or self.spec.num_tests)
            need = need + state.calls.estimate(self.spec.model, JUDGE_TEST_PROMPT + state.query + longest + "x" * 200,
                                               8, 1, calls)
        return need
