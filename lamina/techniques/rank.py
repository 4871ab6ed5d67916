"""rank: keep the top_k candidates by a listwise ranking, pairwise comparisons, or reward scores."""
from __future__ import annotations

import asyncio
import itertools
from typing import Literal

from pydantic import Field, model_validator

from lamina.budget import Estimate
from lamina.techniques.base import Candidate, State, Technique, numbered
from lamina.techniques.parse import parse_ab, parse_ranking
from lamina.techniques.reward import (OWN_CONFIDENCE, RewardMode, by_score, check_verifier, score_candidates,
                                     score_estimate)
from lamina.techniques.spec_base import Component

LISTWISE_PROMPT = ("Question: {query}\n\nResponses:\n{responses}\n\n"
                   "Rank the responses from best to worst. Reply only with their numbers, e.g. [2] > [1] > [3].")
PAIRWISE_PROMPT = ("Question: {query}\n\nResponse A: {a}\n\nResponse B: {b}\n\n"
                   "Which response is better? Reply with A or B only.")


class RankSpec(Component):
    type: Literal["rank"]
    method: Literal["listwise", "pairwise", "reward"] = "listwise"
    top_k: int | None = Field(None, ge=1)
    use_critiques: bool = False
    reward_mode: RewardMode = "judge"  # method reward: how candidates are scored (see the reward technique)
    verifier: str | None = None  # reward_mode verifier: the verifier file

    @model_validator(mode="after")
    def _verifier_file(self) -> "RankSpec":
        check_verifier("reward_mode", self.reward_mode, self.verifier)
        return self


class Rank(Technique):
    kind = "rank"
    spec_class = RankSpec
    builtin = {"temperature": 0.0, "max_tokens": 32}
    spec: RankSpec

    def logprobs_needed(self) -> int | None:
        return OWN_CONFIDENCE.get(self.spec.reward_mode) if self.spec.method == "reward" else None

    async def run(self, state: State) -> list[Candidate]:
        if len(state.candidates) <= 1:
            return list(state.candidates)
        if self.spec.method == "reward":
            ranked = by_score(await score_candidates(self, state, self.spec.reward_mode, self.spec.verifier))
        elif self.spec.method == "pairwise":
            ranked = await self.pairwise(state)
        else:
            ranked = await self.listwise(state)
        return ranked[: self.spec.top_k] if self.spec.top_k else ranked

    async def listwise(self, state: State) -> list[Candidate]:
        cands = state.candidates
        prompt = LISTWISE_PROMPT.format(query=state.query, responses=numbered(cands, self.spec.use_critiques))
        reply = (await self.ask(state, prompt))[0].text
        order = parse_ranking(reply, len(cands))
        if order is None:
            self.note(state, fallback="unparsed ranking", reply=reply, rule="kept input order")
            return list(cands)
        return [cands[i] for i in order]

    async def pairwise(self, state: State) -> list[Candidate]:
        cands = state.candidates
        pairs = list(itertools.combinations(range(len(cands)), 2))

        async def compare(k: int, i: int, j: int) -> tuple[int, int, str | None]:
            prompt = PAIRWISE_PROMPT.format(query=state.query, a=cands[i].text.strip(), b=cands[j].text.strip())
            return i, j, parse_ab((await self.ask(state, prompt, call_index=k))[0].text)

        wins = [0.0] * len(cands)
        for i, j, verdict in await asyncio.gather(*(compare(k, i, j) for k, (i, j) in enumerate(pairs))):
            if verdict is None:
                self.note(state, fallback="unparsed comparison", pair=[i, j], rule="half a win each")
            wins[i] += 1.0 if verdict == "A" else 0.5 if verdict is None else 0.0
            wins[j] += 1.0 if verdict == "B" else 0.5 if verdict is None else 0.0
        order = sorted(range(len(cands)), key=lambda i: -wins[i])
        return [cands[i] for i in order]

    def estimate(self, state: State) -> Estimate:
        n = len(state.candidates)
        if n <= 1:
            return Estimate()
        if self.spec.method == "reward":
            return score_estimate(self, state, self.spec.reward_mode)
        text = "\n".join(c.text[:1200] + (c.critique or "")[:600] for c in state.candidates)
        if self.spec.method == "pairwise":
            longest = max((c.text for c in state.candidates), key=len)
            return self.per_call_estimate(state, PAIRWISE_PROMPT + state.query + longest * 2, n * (n - 1) // 2)
        return self.per_call_estimate(state, LISTWISE_PROMPT + state.query + text, 1)
