"""What a served model name resolves to: a local engine or an architecture, both streaming `Generation`s."""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from lamina.engine.outputs import CompletionOutput, RequestOutput
from lamina.engine.sampling_params import SamplingParams
from lamina.server.errors import bad_request

Messages = list[dict[str, str]]


@dataclass(slots=True)
class Generation:
    """A cumulative snapshot of every choice of one HTTP request."""

    outputs: list[CompletionOutput]
    finished: bool
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    lamina: dict[str, Any] | None = None  # architectures: inner usage, candidates, trace


@dataclass(slots=True)
class LocalModel:
    name: str
    engine: Any  # AsyncEngine
    kind: str = "model"
    _token_text: dict[int, str] = field(default_factory=dict)

    @property
    def max_model_len(self) -> int:
        return self.engine.engine.max_model_len

    def token_text(self, token_id: int) -> str:
        text = self._token_text.get(token_id)
        if text is None:
            text = self._token_text[token_id] = self.engine.tokenizer.decode([token_id])
        return text

    def chat_prompt(self, messages: Messages) -> str:
        return self.engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True)

    def stats(self) -> dict[str, int]:
        return self.engine.stats()

    async def generate(self, prompts: list[str | list[int]], params: SamplingParams,
                       request_id: str) -> AsyncIterator[Generation]:
        if len(prompts) == 1:
            async for out in self.engine.generate(prompts[0], params, request_id=request_id):
                yield _snapshot([out], params.n)
            return
        streams = [self.engine.generate(p, params, request_id=f"{request_id}-{i}") for i, p in enumerate(prompts)]
        latest: list[RequestOutput | None] = [None] * len(prompts)
        async for index, out in _merge(streams):
            latest[index] = out
            if all(o is not None for o in latest):
                yield _snapshot(latest, params.n)  # type: ignore[arg-type]


def _snapshot(outs: list[RequestOutput], n: int) -> Generation:
    outputs = []
    for p, out in enumerate(outs):
        for o in out.outputs:
            outputs.append(CompletionOutput(p * n + o.index, o.text, o.token_ids, o.logprobs, o.finish_reason, o.stop_reason))
    return Generation(outputs, all(o.finished for o in outs), sum(len(o.prompt_token_ids) for o in outs),
                      sum(len(c.token_ids) for c in outputs), sum(o.num_cached_tokens for o in outs))


async def _merge(streams: list[AsyncIterator[RequestOutput]]) -> AsyncIterator[tuple[int, RequestOutput]]:
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[RequestOutput]) -> None:
        try:
            async for out in stream:
                await queue.put((index, out))
        except BaseException as exc:
            await queue.put((index, exc))
            raise
        finally:
            await queue.put((index, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    open_streams = len(tasks)
    try:
        while open_streams:
            index, item = await queue.get()
            if item is None:
                open_streams -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass(slots=True)
class ArchitectureModel:
    """An architecture served as one model: `n` runs it n times concurrently, run i with seed `seed + i` (without a
    seed: the architecture's own seeding, then 1, 2, ...); usage sums every inner call of every run. Its spec sets
    every component's sampling: request fields such as temperature or max_tokens are listed back in
    `lamina.ignored_params` instead of being applied."""

    name: str
    arch: Any  # lamina.architecture.Architecture
    kind: str = "architecture"

    async def generate(self, messages: Messages, n: int, *, seed: int | None, tests: list[str] | None,
                       trace: bool, ignored: list[str] = ()) -> AsyncIterator[Generation]:
        seeds = [None if seed is None and i == 0 else (seed or 0) + i for i in range(n)]
        results = await asyncio.gather(*(self.arch.run(messages, tests=tests, seed=s) for s in seeds))
        usage = results[0].usage
        for result in results[1:]:
            usage = usage + result.usage
        outputs = [CompletionOutput(i, r.answer, [], None, "stop") for i, r in enumerate(results)]
        lamina: dict[str, Any] = {"architecture": self.arch.name, "seeds": seeds, "usage": usage.to_dict(),
                                  "candidates": [list(r.candidates) for r in results],
                                  "ignored_params": list(ignored)}
        if trace:
            lamina["trace"] = json.loads(json.dumps([r.trace for r in results], default=str))
        yield Generation(outputs, True, usage.prompt_tokens, usage.completion_tokens, lamina=lamina)


def arch_messages_from_prompts(prompts: list[str | list[int]]) -> Messages:
    if len(prompts) != 1 or not isinstance(prompts[0], str):
        raise bad_request("an architecture model takes exactly one text prompt", "prompt")
    return [{"role": "user", "content": prompts[0]}]


TokenText = Callable[[int], str]
