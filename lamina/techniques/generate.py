"""generate: `samples` answers from each model; a model's samples go to its backend as ONE request with n."""
from __future__ import annotations

import asyncio
from typing import Literal

from pydantic import Field

from lamina.budget import Estimate
from lamina.techniques.base import Candidate, State, Technique
from lamina.techniques.spec_base import Component


class GenerateSpec(Component):
    type: Literal["generate"]
    models: list[str] | None = Field(None, min_length=1)
    samples: int = Field(1, ge=1, le=256)
    system: str | None = None
    logprobs: int | None = Field(None, ge=0, le=20)

    def aliases(self) -> list[str | None]:
        return list(self.models) if self.models else [self.model]


class Generate(Technique):
    kind = "generate"
    spec_class = GenerateSpec
    builtin = {"temperature": 0.7, "max_tokens": 256}
    judge = False  # a generator: the alias's params win over its built-in settings
    reads_candidates = False
    spec: GenerateSpec

    def aliases(self) -> list[str | None]:
        return self.spec.aliases()

    def alias_params(self, state: State, alias: str | None) -> dict:
        logprobs = self.logprobs_to_request()
        force = {"logprobs": logprobs} if logprobs is not None else {}
        return self.params(state, alias, **force)

    async def run(self, state: State) -> list[Candidate]:
        messages = self.messages(state)
        batches = await asyncio.gather(*(
            state.calls.call(self.name, alias, messages, samples=self.spec.samples, call_index=k,
                             params=self.alias_params(state, alias))
            for k, alias in enumerate(self.aliases())))
        return [Candidate.sampled(c, self.name, state.calls.handle(alias).alias)
                for alias, batch in zip(self.aliases(), batches) for c in batch]

    def estimate(self, state: State) -> Estimate:
        text = "\n".join(m["content"] for m in self.messages(state))
        total = Estimate()
        for alias in self.aliases():
            max_tokens = int(self.alias_params(state, alias).get("max_tokens", 16))
            total = total + state.calls.estimate(alias, text, max_tokens, self.spec.samples)
        return total
