"""verify: keep the candidates a judge calls correct; when none pass, fall back by the declared rule."""
from __future__ import annotations

import asyncio
from typing import Literal

from lamina.budget import Estimate
from lamina.techniques.base import Candidate, State, Technique
from lamina.techniques.parse import parse_verdict
from lamina.techniques.spec_base import Component

VERIFY_PROMPT = ("Question: {query}\n\nResponse: {response}\n\n"
                 "Check the reasoning of the response step by step in one or two sentences, "
                 "then end with 'Verdict: correct' or 'Verdict: incorrect'.")


class VerifySpec(Component):
    type: Literal["verify"]
    fallback: Literal["keep_all", "keep_first", "none"] = "keep_all"


class Verify(Technique):
    kind = "verify"
    spec_class = VerifySpec
    builtin = {"temperature": 0.0, "max_tokens": 64}
    spec: VerifySpec

    async def run(self, state: State) -> list[Candidate]:
        async def judge(i: int, cand: Candidate) -> bool:
            prompt = VERIFY_PROMPT.format(query=state.query, response=cand.text.strip()[:1500])
            reply = (await self.ask(state, prompt, call_index=i))[0].text
            verdict = parse_verdict(reply)
            if verdict is None:
                self.note(state, fallback="unparsed verdict", candidate=i, reply=reply, rule="counted as passing")
            return verdict is not False

        verdicts = await asyncio.gather(*(judge(i, c) for i, c in enumerate(state.candidates)))
        kept = [c for c, ok in zip(state.candidates, verdicts) if ok]
        if kept or not state.candidates:
            return kept
        self.note(state, fallback="no candidate verified", rule=self.spec.fallback)
        if self.spec.fallback == "keep_all":
            return list(state.candidates)
        return state.candidates[:1] if self.spec.fallback == "keep_first" else []

    def estimate(self, state: State) -> Estimate:
        longest = max((c.text[:1500] for c in state.candidates), key=len, default="")
        return self.per_call_estimate(state, VERIFY_PROMPT + state.query + longest, len(state.candidates))
