"""first_finish: start `samples` samples and keep the first one to finish; the rest are cancelled."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from lamina.budget import Estimate
from lamina.techniques.base import Candidate, State, Technique
from lamina.techniques.spec_base import Component


class FirstFinishSpec(Component):
    type: Literal["first_finish"]
    samples: int = Field(4, ge=1, le=256)
    system: str | None = None


class FirstFinish(Technique):
    kind = "first_finish"
    spec_class = FirstFinishSpec
    builtin = {"temperature": 0.7, "max_tokens": 256}
    judge = False  # a generator: the alias's params win over its built-in settings
    reads_candidates = False
    spec: FirstFinishSpec

    async def run(self, state: State) -> list[Candidate]:
        outs = await state.calls.call(self.name, self.spec.model, self.messages(state), samples=self.spec.samples,
                                      first_finish=True, params=self.params(state))
        alias = state.calls.handle(self.spec.model).alias
        return [Candidate.sampled(c, self.name, alias) for c in outs]

    def estimate(self, state: State) -> Estimate:
        text = "\n".join(m["content"] for m in self.messages(state))
        return self.per_call_estimate(state, text, 1, self.spec.samples)
