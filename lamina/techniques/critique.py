"""critique: strengths and weaknesses of each candidate, attached to it for fuse and rank."""
from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Literal

from lamina.budget import Estimate
from lamina.techniques.base import Candidate, State, Technique
from lamina.techniques.spec_base import Component

CRITIQUE_PROMPT = ("Question: {query}\n\nResponse: {response}\n\n"
                   "List the strengths and the weaknesses of this response in two short bullet lists.")


class CritiqueSpec(Component):
    type: Literal["critique"]


class Critique(Technique):
    kind = "critique"
    spec_class = CritiqueSpec
    spec: CritiqueSpec
    builtin = {"temperature": 0.0, "max_tokens": 96}

    async def run(self, state: State) -> list[Candidate]:
        async def one(i: int, cand: Candidate) -> Candidate:
            prompt = CRITIQUE_PROMPT.format(query=state.query, response=cand.text.strip()[:1200])
            return replace(cand, critique=(await self.ask(state, prompt, call_index=i))[0].text.strip())

        return list(await asyncio.gather(*(one(i, c) for i, c in enumerate(state.candidates))))

    def estimate(self, state: State) -> Estimate:
        longest = max((c.text[:1200] for c in state.candidates), key=len, default="")
        return self.per_call_estimate(state, CRITIQUE_PROMPT + state.query + longest, len(state.candidates))
