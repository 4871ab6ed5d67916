"""A task's executable check as a reward: the fraction of its tests an answer's program passes in the sandbox."""
from __future__ import annotations

import asyncio

from lamina.rewards.base import OutcomeRewardModel, Question, Response, Score

SANDBOX_WORKERS = 4  # answers checked at once (each runs its tests in separate sandbox processes)


def program_of(text: str, tests: list[str] = ()) -> str:
    """The code of an answer (only the definitions the tests call, without the model's own self-tests; see
    lamina.answers.code), else the whole text."""
    from lamina.answers.code import called_names
    from lamina.answers.extract import extract_code

    return extract_code(text, called_names(list(tests))) or text


class TestsPassed(OutcomeRewardModel):
    """Scores in [0, 1]: the pass rate of `tests` (Python statements, e.g. asserts) run after each answer's program
    in lamina.sandbox, each test in its own process with `timeout_s` and `memory_mb` limits."""

    __test__ = False
    name = "tests"

    def __init__(self, tests: list[str], timeout_s: float = 5.0, memory_mb: int = 512) -> None:
        self.tests = list(tests)
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb

    async def score(self, question: Question, answers: list[Response]) -> list[Score]:
        from lamina.sandbox import execute_tests

        slots = asyncio.Semaphore(SANDBOX_WORKERS)

        async def one(answer: Response) -> float:
            async with slots:
                report = await asyncio.to_thread(execute_tests, program_of(answer.text, self.tests), self.tests,
                                                 timeout_s=self.timeout_s, memory_mb=self.memory_mb)
            return report.pass_rate

        return list(await asyncio.gather(*(one(a) for a in answers)))
