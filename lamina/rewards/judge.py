"""An LLM judge's verdict probability as a reward: P(Yes) / (P(Yes) + P(No)) over the first token of its reply.

The judge is any model behind an `ask(prompt, index) -> Completion` callable (one greedy token with top-20
logprobs; `index` numbers the calls of one batch, for seeds): a technique passes its own `ask` (through the
Caller: budget, cache, trace), a search passes a backend's. The `reward` technique's `mode: logprob` is this judge.
"""
from __future__ import annotations

import asyncio
import math
from typing import Awaitable, Callable

from lamina.backends.base import Completion, TokenLP
from lamina.rewards.base import (OutcomeRewardModel, ProcessRewardModel, Question, Response, Score, query_of)

VERDICT_PROMPT = "Question: {query}\n\nResponse: {response}\n\nIs the response correct? Answer Yes or No."
STEP_VERDICT_PROMPT = ("Question: {query}\n\nPartial response: {response}\n\n"
                       "Is every step so far correct? Answer Yes or No.")
VERDICT_LOGPROBS = 20  # the top alternatives a verdict call asks for
Ask = Callable[[str, int], Awaitable[Completion]]


def verdict_probability(first: TokenLP | None, yes: tuple[str, ...] = ("yes", "correct", "true"),
                        no: tuple[str, ...] = ("no", "incorrect", "false", "wrong")) -> float | None:
    """P(yes) / (P(yes) + P(no)) over the first generated token's top alternatives."""
    if first is None:
        return None
    options = dict(first.top) or {first.token: first.logprob}
    p_yes = sum(math.exp(v) for k, v in options.items() if k.strip().lower() in yes)
    p_no = sum(math.exp(v) for k, v in options.items() if k.strip().lower() in no)
    if p_yes + p_no == 0:
        return None
    return p_yes / (p_yes + p_no)


class VerdictJudge(OutcomeRewardModel, ProcessRewardModel):
    """Scores in [0, 1]: the judge's probability that the (partial) response is correct; None when neither verdict
    is among its first token's top alternatives."""

    name = "judge"

    def __init__(self, ask: Ask) -> None:
        self.ask = ask

    async def verdicts(self, question: Question, texts: list[str],
                       template: str = VERDICT_PROMPT) -> list[tuple[Score, Completion]]:
        """(score, the judge's reply) per text, the calls concurrent."""
        async def one(i: int, text: str) -> tuple[Score, Completion]:
            out = await self.ask(template.format(query=query_of(question), response=text.strip()), i)
            return verdict_probability(out.logprobs[0] if out.logprobs else None), out

        return list(await asyncio.gather(*(one(i, t) for i, t in enumerate(texts))))

    async def score(self, question: Question, answers: list[Response]) -> list[Score]:
        return [s for s, _ in await self.verdicts(question, [a.text for a in answers])]

    async def score_steps(self, question: Question, steps_per_answer: list[list[Response]]) -> list[list[Score]]:
        prefixes = [["".join(s.text for s in steps[: j + 1]) for j in range(len(steps))] for steps in steps_per_answer]
        flat = [p for row in prefixes for p in row]
        scores = iter(s for s, _ in await self.verdicts(question, flat, STEP_VERDICT_PROMPT))
        return [[next(scores) for _ in row] for row in prefixes]
