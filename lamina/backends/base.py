"""What every backend returns, and the base class that counts its usage and bounds its concurrency."""
from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field
from typing import Any

from lamina.accounting import Usage
from lamina.engine.sampling_params import SamplingParams

Messages = list[dict[str, str]]


@dataclass(slots=True)
class TokenLP:
    token: str
    logprob: float
    top: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class Completion:
    text: str
    num_tokens: int
    logprobs: list[TokenLP] | None = None
    finish_reason: str | None = None
    token_ids: list[int] | None = None  # where the backend returns them (the local engine does)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Completion":
        lps = data.get("logprobs")
        logprobs = None if lps is None else [TokenLP(lp["token"], lp["logprob"], lp.get("top") or {}) for lp in lps]
        return cls(data["text"], int(data["num_tokens"]), logprobs, data.get("finish_reason"), data.get("token_ids"))


class Completions(list):
    """The samples of one call, plus what the call cost."""

    def __init__(self, items=(), prompt_tokens: int = 0, seconds: float = 0.0, spent_tokens: int | None = None,
                 cached_prompt_tokens: int = 0, requests: int = 1) -> None:
        super().__init__(items)
        self.requests = requests  # requests made to the model server (or engine) for these samples: each is a call
        self.prompt_tokens = prompt_tokens
        self.cached_prompt_tokens = cached_prompt_tokens  # of prompt_tokens, those served from a prefix cache
        self.seconds = seconds
        self.spent_tokens = spent_tokens  # tokens generated, kept or not (first_finish cancels the rest)

    @property
    def completion_tokens(self) -> int:
        return self.spent_tokens if self.spent_tokens is not None else sum(c.num_tokens for c in self)


class Backend:
    """`complete(messages | prompt, params)` -> Completions; subclasses implement `_complete`."""

    kind = "base"

    def __init__(self, model: str, max_concurrency: int = 8) -> None:
        self.model = model
        self.usage = Usage()
        self.max_concurrency = max_concurrency
        self._slots: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def slots(self) -> asyncio.Semaphore:
        """The concurrency limit of this backend, made anew for each event loop that uses it."""
        loop = asyncio.get_running_loop()
        if self._slots is None or self._loop is not loop:
            self._slots, self._loop = asyncio.Semaphore(self.max_concurrency), loop
        return self._slots

    @property
    def identity(self) -> str:
        return f"{self.kind}:{self.model}"

    async def complete(self, messages: Messages | None, prompt: str | None, params: SamplingParams) -> Completions:
        async with self.slots():
            out = await self._complete(messages, prompt, params)
        return self._record(out)

    async def first_finish(self, messages: Messages | None, prompt: str | None, params: SamplingParams) -> Completions:
        """The first of `params.n` samples to finish; the others are cancelled."""
        async with self.slots():
            out = await self._first_finish(messages, prompt, params)
        return self._record(out)

    def _record(self, out: Completions) -> Completions:
        self.usage.add_call(self.identity, out.prompt_tokens, out.completion_tokens, out.seconds, cached=False,
                            cached_prompt_tokens=out.cached_prompt_tokens, calls=out.requests)
        return out

    def count_tokens(self, text: str) -> int:
        """An upper-bound estimate used by budgets before a call is made."""
        return len(text.encode("utf-8")) // 2 + 8

    async def _complete(self, messages: Messages | None, prompt: str | None, params: SamplingParams) -> Completions:
        raise NotImplementedError

    async def _first_finish(self, messages: Messages | None, prompt: str | None,
                            params: SamplingParams) -> Completions:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None
