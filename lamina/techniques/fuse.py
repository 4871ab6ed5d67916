"""fuse: synthesize the candidates (and their critiques) into one or more new candidates."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from lamina.budget import Estimate
from lamina.techniques.base import Candidate, State, Technique, numbered
from lamina.techniques.spec_base import Component

FUSE_PROMPT = ("Question: {query}\n\nHere are some responses{critiqued}:\n{responses}\n\n"
               "Using what is right in them and fixing what is wrong, write one best answer to the question.")


class FuseSpec(Component):
    type: Literal["fuse"]
    samples: int = Field(1, ge=1, le=64)
    top_k: int | None = Field(None, ge=1)  # how many candidates to show the fuser
    use_critiques: bool = True


class Fuse(Technique):
    kind = "fuse"
    spec_class = FuseSpec
    builtin = {"temperature": 0.7, "max_tokens": 256}
    judge = False  # a generator: the alias's params win over its built-in settings
    spec: FuseSpec

    def prompt(self, state: State) -> str:
        shown = state.candidates[: self.spec.top_k] if self.spec.top_k else state.candidates
        critiques = self.spec.use_critiques and any(c.critique for c in shown)
        return FUSE_PROMPT.format(query=state.query, critiqued=" with critiques" if critiques else "",
                                  responses=numbered(shown, critiques))

    async def run(self, state: State) -> list[Candidate]:
        if not state.candidates:
            self.note(state, fallback="nothing to fuse", rule="answer the query directly")
            outs = await state.calls.call(self.name, self.spec.model, list(state.messages), samples=self.spec.samples,
                                          params=self.params(state))
        else:
            outs = await self.ask(state, self.prompt(state), samples=self.spec.samples)
        alias = state.calls.handle(self.spec.model).alias
        return [Candidate.sampled(c, self.name, alias) for c in outs]

    def estimate(self, state: State) -> Estimate:
        return self.per_call_estimate(state, self.prompt(state), 1, self.spec.samples)
