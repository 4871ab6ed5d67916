"""What a served model name resolves to: a local engine or an architecture, both streaming `Generation`s."""
from __future__ import annotations

import asyncio
import json
import random
from contextlib import aclosing
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from lamina.engine.outputs import CompletionOutput, RequestOutput, TokenLogprob
from lamina.engine.sampling_params import SamplingParams
from lamina.server.errors import bad_request

Messages = list[dict[str, str]]


@dataclass(slots=True)
class Generation:
    """What the choices of one HTTP request added since the previous Generation (choice indices are request-wide),
    with the request's token counts so far. A choice's deltas concatenate to its answer; its last one carries its
    finish_reason."""

    outputs: list[CompletionOutput]
    finished: bool
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    lamina: dict[str, Any] | None = None  # architectures: inner usage, candidates, trace
    spent: dict[str, int] | None = None  # architectures: tokens spent now (spent_*), when cost differs from it
    draft_tokens: int = 0  # speculative decoding, over the request so far: draft tokens proposed ...
    accepted_tokens: int = 0  # ... and accepted


@dataclass(slots=True)
class LocalModel:
    name: str
    engine: Any  # AsyncEngine
    kind: str = "model"

    @property
    def max_model_len(self) -> int:
        return self.engine.engine.max_model_len

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    def chat_prompt(self, messages: Messages, add_generation_prompt: bool = True,
                    continue_final_message: bool = False) -> str:
        return self.engine.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                                         continue_final_message=continue_final_message)

    def stats(self) -> dict[str, int]:
        return self.engine.stats()

    async def generate(self, prompts: list[str | list[int]], params: SamplingParams,
                       request_id: str, echo: bool = False) -> AsyncIterator[Generation]:
        """One engine request per prompt; prompt p's sample i is choice p * n + i. Yields the engine's deltas; with
        `echo`, each choice's first delta starts with its prompt (text, and with logprobs its prompt logprobs)."""
        if len(prompts) == 1:
            outs = _indexed(self.engine.generate(prompts[0], params, request_id=request_id))
        else:
            outs = _merge([self.engine.generate(p, params, request_id=f"{request_id}-{i}") for i, p in enumerate(prompts)])
        totals = _Totals(len(prompts), _Echo(self.tokenizer) if echo else None)
        async with aclosing(outs):  # a client that leaves closes this stream: abort the engine requests now
            async for p, out in outs:
                yield totals.add(p, out, params.n)


@dataclass(slots=True)
class _Totals:
    """Token counts over the engine requests of one HTTP request."""

    num_requests: int
    echo: "_Echo | None" = None
    prompt_tokens: dict[int, int] = field(default_factory=dict)
    cached_tokens: dict[int, int] = field(default_factory=dict)
    drafts: dict[int, tuple[int, int]] = field(default_factory=dict)  # engine request -> (drafted, accepted) so far
    completion_tokens: int = 0
    finished: set[int] = field(default_factory=set)

    def add(self, p: int, out: RequestOutput, n: int) -> Generation:
        self.prompt_tokens[p], self.cached_tokens[p] = len(out.prompt_token_ids), out.num_cached_tokens
        self.drafts[p] = (out.num_draft_tokens, out.num_accepted_tokens)
        outputs = []
        for o in out.outputs:
            self.completion_tokens += len(o.token_ids)
            if p != 0 or self.echo is not None:
                o = CompletionOutput(p * n + o.index, o.text, o.token_ids, o.logprobs, o.finish_reason, o.stop_reason)
            if self.echo is not None:
                self.echo.prepend(p, out, o)
            outputs.append(o)
        if out.finished:
            self.finished.add(p)
        return Generation(outputs, len(self.finished) == self.num_requests, sum(self.prompt_tokens.values()),
                          self.completion_tokens, sum(self.cached_tokens.values()),
                          draft_tokens=sum(d for d, _ in self.drafts.values()),
                          accepted_tokens=sum(a for _, a in self.drafts.values()))


class _Echo:
    """Completions' `echo`: puts the prompt (its text, and its logprobs when the choice has logprobs) before each
    choice's first delta, as vLLM does; the first prompt token has a null logprob."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.prompt_logprobs: dict[int, list[TokenLogprob]] = {}  # engine request -> its prompt's entries
        self.done: set[int] = set()  # choices already echoed

    def prepend(self, p: int, out: RequestOutput, o: CompletionOutput) -> None:
        if out.prompt_logprobs is not None:  # the request's first output carries them (OutputKind.DELTA)
            ids = out.prompt_token_ids
            self.prompt_logprobs[p] = [lp or TokenLogprob(ids[i], self.tokenizer.id_to_token(ids[i]), None)
                                       for i, lp in enumerate(out.prompt_logprobs)]
        if o.index in self.done:
            return
        self.done.add(o.index)
        prompt = out.prompt if out.prompt is not None else self.tokenizer.decode(out.prompt_token_ids, False)
        o.text = prompt + o.text
        if o.logprobs is not None:
            o.logprobs = self.prompt_logprobs[p] + o.logprobs


async def _indexed(stream: AsyncIterator[RequestOutput]) -> AsyncIterator[tuple[int, RequestOutput]]:
    async with aclosing(stream):
        async for out in stream:
            yield 0, out


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
    """An architecture served as one model: `n` runs it n times concurrently, run i with seed `seed + i`; a request
    without a seed draws a fresh random seed per run, so it samples afresh like a plain model (clients such as
    best-of-n proxies sample by repeating requests): only deterministic (greedy) calls may replay from the call
    cache then, while a seeded request is reproducible and may replay every call. `lamina.sampling` says which it
    was. usage sums every inner call of every run: its tokens are the cost as if uncached, `spent_*` what was spent
    now (`lamina.usage` has the breakdown). Its spec sets every component's sampling: request fields such as
    temperature or max_tokens are listed back in `lamina.ignored_params` instead of being applied."""

    name: str
    arch: Any  # lamina.architecture.Architecture
    kind: str = "architecture"

    async def generate(self, messages: Messages, n: int, *, seed: int | None, tests: list[str] | None,
                       trace: bool, ignored: list[str] = ()) -> AsyncIterator[Generation]:
        fresh = seed is None
        seeds = [random.getrandbits(62) if fresh else seed + i for i in range(n)]
        results = await asyncio.gather(*(self.arch.run(messages, tests=tests, seed=s) for s in seeds))
        usage = results[0].usage
        for result in results[1:]:
            usage = usage + result.usage
        outputs = [CompletionOutput(i, r.answer, [], None, "stop") for i, r in enumerate(results)]
        sampling = ("fresh: no seed, so sampled calls ran anew; only greedy calls may replay from the call cache"
                    if fresh else "seeded: reproducible; calls may replay from the call cache")
        lamina: dict[str, Any] = {"architecture": self.arch.name, "seeds": seeds, "sampling": sampling,
                                  "usage": usage.to_dict(), "candidates": [list(r.candidates) for r in results],
                                  "ignored_params": list(ignored)}
        if trace:
            lamina["trace"] = json.loads(json.dumps([r.trace for r in results], default=str))
        spent = {"spent_prompt_tokens": usage.spent_prompt_tokens,
                 "spent_completion_tokens": usage.spent_completion_tokens, "spent_tokens": usage.spent_tokens}
        yield Generation(outputs, True, usage.prompt_tokens, usage.completion_tokens, usage.cached_prompt_tokens,
                         lamina=lamina, spent=spent)


def arch_messages_from_prompts(prompts: list[str | list[int]]) -> Messages:
    if len(prompts) != 1 or not isinstance(prompts[0], str):
        raise bad_request("an architecture model takes exactly one text prompt", "prompt")
    return [{"role": "user", "content": prompts[0]}]

