"""reward: score each candidate by a judge's 1-10 rating, or by the probability of a "Yes" verdict token."""
from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Literal

from pydantic import Field

from lamina.budget import Estimate
from lamina.techniques.base import Candidate, State, Technique
from lamina.techniques.parse import parse_score, verdict_probability
from lamina.techniques.spec_base import Component

JUDGE_PROMPT = ("Question: {query}\n\nResponse: {response}\n\n"
                "Rate how good and correct the response is, from 1 (bad) to 10 (excellent). Reply with the number only.")
VERDICT_PROMPT = "Question: {query}\n\nResponse: {response}\n\nIs the response correct? Answer Yes or No."


async def score_candidates(tech: Technique, state: State, mode: str) -> list[Candidate]:
    """Copies of the candidates with `score` set; unparsable ratings score None and are recorded in the trace."""
    async def one(i: int, cand: Candidate) -> Candidate:
        if mode == "logprob":
            prompt = VERDICT_PROMPT.format(query=state.query, response=cand.text.strip())
            out = (await tech.ask(state, prompt, call_index=i, max_tokens=1, temperature=0.0, logprobs=20))[0]
            score = verdict_probability(out.logprobs[0] if out.logprobs else None)
        else:
            prompt = JUDGE_PROMPT.format(query=state.query, response=cand.text.strip())
            out = (await tech.ask(state, prompt, call_index=i))[0]
            score = parse_score(out.text)
        if score is None:
            tech.note(state, fallback="unscored", candidate=i, reply=out.text, rule="scores None, sorted last")
        return replace(cand, score=score)

    return list(await asyncio.gather(*(one(i, c) for i, c in enumerate(state.candidates))))


def by_score(candidates: list[Candidate]) -> list[Candidate]:
    """Highest score first; unscored last; ties keep their order."""
    return sorted(candidates, key=lambda c: -c.score if c.score is not None else float("inf"))


def score_estimate(tech: Technique, state: State, mode: str) -> Estimate:
    longest = max((c.text for c in state.candidates), key=len, default="")
    max_tokens = 1 if mode == "logprob" else tech.max_tokens(state)
    return state.calls.estimate(tech.spec.model, JUDGE_PROMPT + state.query + longest, max_tokens, 1,
                                len(state.candidates))


class RewardSpec(Component):
    type: Literal["reward"]
    mode: Literal["judge", "logprob"] = "judge"
    top_k: int | None = Field(None, ge=1)


class Reward(Technique):
    kind = "reward"
    spec_class = RewardSpec
    builtin = {"temperature": 0.0, "max_tokens": 8}
    spec: RewardSpec

    async def run(self, state: State) -> list[Candidate]:
        ranked = by_score(await score_candidates(self, state, self.spec.mode))
        return ranked[: self.spec.top_k] if self.spec.top_k else ranked

    def estimate(self, state: State) -> Estimate:
        return score_estimate(self, state, self.spec.mode)
