"""A scripted backend for tests: canned replies chosen by prompt substrings, and a record of every call.

    backend = ScriptedBackend({"Verdict": "Verdict: correct", "Rank the": "[2] > [1]"})
    result = run_spec(spec, question, backends={"m": backend})
    backend.calls[0].params.temperature  # exactly what each call was made with

A reply is a string, a Completion (to give logprobs), or a callable (prompt, params, index) -> either; a list of
replies gives sample i the reply i (cycling). The first rule whose key occurs in the prompt (every message's
content, joined by newlines) answers; otherwise `default`, which by default depends on the seed and the sample
index ("sample <seed>/<index>"), so equal seeds give equal samples. Tokens are whitespace-separated words: a
reply is cut to params.max_tokens words (finish_reason "length", else "stop"); a prompt costs its word count.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

from lamina.backends.base import Backend, Completion, Completions, Messages
from lamina.engine.sampling_params import SamplingParams

Reply = Union[str, Completion, Callable[[str, SamplingParams, int], Union[str, Completion]]]


def seeded(prompt: str, params: SamplingParams, index: int) -> str:
    return f"sample {params.seed}/{index}"


@dataclass(slots=True)
class ScriptedCall:
    messages: Messages
    params: SamplingParams
    first_finish: bool

    @property
    def prompt(self) -> str:
        return "\n".join(m["content"] for m in self.messages)


class ScriptedBackend(Backend):
    kind = "scripted"

    def __init__(self, rules: dict[str, Reply | list[Reply]] | None = None, default: Reply = seeded,
                 model: str = "scripted", cached_prompt_tokens: int = 0) -> None:
        super().__init__(model)
        self.rules = dict(rules or {})
        self.default = default
        self.cached_prompt_tokens = cached_prompt_tokens  # reported as served from a prefix cache, per call
        self.calls: list[ScriptedCall] = []

    def made(self, substring: str) -> list[ScriptedCall]:
        """The calls whose prompt contains `substring`, in the order they were made."""
        return [c for c in self.calls if substring in c.prompt]

    def reply(self, prompt: str, params: SamplingParams, index: int) -> Completion:
        chosen = next((r for key, r in self.rules.items() if key in prompt), self.default)
        if isinstance(chosen, list):
            chosen = chosen[index % len(chosen)]
        if callable(chosen):
            chosen = chosen(prompt, params, index)
        if isinstance(chosen, Completion):
            return chosen
        words = chosen.split()
        if len(words) > params.max_tokens:
            return Completion(" ".join(words[: params.max_tokens]), params.max_tokens, finish_reason="length")
        return Completion(chosen, len(words), finish_reason="stop")

    def _record_call(self, messages: Messages | None, prompt: str | None, params: SamplingParams,
                     first_finish: bool) -> tuple[str, list[Completion]]:
        call = ScriptedCall(messages or [{"role": "user", "content": prompt or ""}], params, first_finish)
        self.calls.append(call)
        return call.prompt, [self.reply(call.prompt, params, i) for i in range(params.n)]

    async def _complete(self, messages: Messages | None, prompt: str | None, params: SamplingParams) -> Completions:
        text, items = self._record_call(messages, prompt, params, False)
        return Completions(items, len(text.split()), 0.0, cached_prompt_tokens=self.cached_prompt_tokens)

    async def _first_finish(self, messages: Messages | None, prompt: str | None,
                            params: SamplingParams) -> Completions:
        """The shortest sample wins; every sample ran as many tokens as the winner (its cost)."""
        text, items = self._record_call(messages, prompt, params, True)
        winner = min(items, key=lambda c: c.num_tokens)
        spent = sum(min(c.num_tokens, winner.num_tokens) for c in items)
        return Completions([winner], len(text.split()), 0.0, spent, self.cached_prompt_tokens)
