"""Turns a stream of Generations (deltas) into one JSON response or an SSE stream, recording metrics on the way."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from lamina.engine.outputs import CompletionOutput, DeltaJoiner
from lamina.server.admission import Slot
from lamina.server.errors import APIError, from_exception
from lamina.server.formats import ChatFormat, TextOffsets
from lamina.server.metrics import Metrics
from lamina.server.streaming import DONE, SSEResponse, sse
from lamina.server.targets import Generation

T = TypeVar("T")
DISCONNECT_POLL_S = 0.25


class ClientGone(Exception):
    pass


@dataclass(slots=True)
class Call:
    """One HTTP generation request: identity, wire format and timing."""

    id: str
    model: str
    endpoint: str
    fmt: ChatFormat
    metrics: Metrics
    include_usage: bool = False
    created: int = field(default_factory=lambda: int(time.time()))
    start: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None

    def envelope(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": "lamina", "choices": choices}

    def note(self, gen: Generation) -> None:
        if self.first_token_at is None and gen.completion_tokens + sum(len(o.text) for o in gen.outputs) > 0:
            self.first_token_at = time.perf_counter()
            self.metrics.ttft.observe(self.first_token_at - self.start, model=self.model)

    def finish(self, outcome: str, gen: Generation | None) -> None:
        m = self.metrics
        m.requests.inc(model=self.model, endpoint=self.endpoint, outcome=outcome)
        if gen is not None:
            m.prompt_tokens.inc(gen.prompt_tokens, model=self.model)
            m.completion_tokens.inc(gen.completion_tokens, model=self.model)
            if gen.draft_tokens:
                m.draft_tokens.inc(gen.draft_tokens, model=self.model)
                m.accepted_tokens.inc(gen.accepted_tokens, model=self.model)
        if outcome == "aborted":
            m.aborted.inc(model=self.model)
        m.latency.observe(time.perf_counter() - self.start, model=self.model, endpoint=self.endpoint)


def usage(gen: Generation) -> dict[str, Any]:
    """OpenAI's usage object; an architecture's adds what it spent now (spent_*: 0 for calls replayed from the call
    cache) beside its cost (prompt/completion/total tokens, as if uncached)."""
    return {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens,
            "total_tokens": gen.prompt_tokens + gen.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": gen.cached_tokens}, **(gen.spent or {})}


def full_body(call: Call, outputs: list[CompletionOutput], gen: Generation) -> dict[str, Any]:
    """The JSON response: `outputs`, the joined choices; `gen`, the last Generation (usage, lamina)."""
    fmt = call.fmt
    choices = [fmt.choice(o.index, o.text, fmt.logprobs(o.logprobs), o.finish_reason) for o in outputs]
    body = call.envelope(fmt.object, choices)
    body["usage"] = usage(gen)
    if gen.lamina is not None:
        body["lamina"] = gen.lamina
    return body


async def until_disconnect(awaitable: Awaitable[T], request: Request) -> T:
    """Await while watching the client; if it leaves, cancel the work (which aborts its engine requests)."""
    task = asyncio.ensure_future(awaitable)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise ClientGone()
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def _joined(call: Call, stream: AsyncIterator[Generation]) -> tuple[list[CompletionOutput], Generation]:
    """The choices, each joined from its deltas, and the last Generation."""
    joiner, gen = DeltaJoiner(), None
    async for gen in stream:
        call.note(gen)
        for o in gen.outputs:
            joiner.add(o)
    assert gen is not None, "a generation stream ended without output"
    return joiner.outputs(), gen


async def respond(call: Call, stream: AsyncIterator[Generation], request: Request, slot: Slot,
                  streaming: bool) -> Response:
    """Runs the request; the slot is released when the response (or its stream) is done."""
    handed_off = False
    try:
        if not streaming:
            outputs, gen = await until_disconnect(_joined(call, stream), request)
            call.finish("ok", gen)
            return JSONResponse(full_body(call, outputs, gen))
        first = await until_disconnect(anext(stream), request)  # errors before any byte become proper statuses
        call.note(first)
        handed_off = True
        return SSEResponse(_events(call, first, stream), on_close=slot.release)
    except ClientGone:
        call.finish("aborted", None)
        return Response(status_code=499)
    except Exception as exc:
        call.finish("error", None)
        raise from_exception(exc) from None
    finally:
        if not handed_off:
            slot.release()


@dataclass(slots=True)
class _ChoiceState:
    offsets: TextOffsets = field(default_factory=TextOffsets)  # completions' text_offset, across chunks
    started: bool = False
    finished: bool = False


async def _events(call: Call, first: Generation, stream: AsyncIterator[Generation]) -> AsyncIterator[bytes]:
    states: dict[int, _ChoiceState] = {}
    gen, outcome = first, "aborted"
    try:
        for chunk in _deltas(call, gen, states):
            yield chunk
        async for gen in stream:
            call.note(gen)
            for chunk in _deltas(call, gen, states):
                yield chunk
        if call.include_usage or gen.lamina is not None:
            tail = call.envelope(call.fmt.chunk_object, [])
            tail["usage"] = usage(gen) if call.include_usage else None
            if gen.lamina is not None:
                tail["lamina"] = gen.lamina
            yield sse(tail)
        yield DONE
        outcome = "ok"
    except Exception as exc:
        outcome = "error"
        yield sse(from_exception(exc).body())
        yield DONE
    finally:
        call.finish(outcome, gen)


def _deltas(call: Call, gen: Generation, states: dict[int, _ChoiceState]) -> list[bytes]:
    """One SSE chunk per choice with news in `gen` (text, logprobs, its finish, or its first appearance)."""
    fmt, chunks = call.fmt, []
    for o in sorted(gen.outputs, key=lambda o: o.index):
        state = states.setdefault(o.index, _ChoiceState())
        if state.finished or not (o.text or o.logprobs or o.finish_reason or not state.started):
            continue
        logprobs = fmt.logprobs(o.logprobs, state.offsets)
        choice = fmt.chunk_choice(o.index, o.text, logprobs, o.finish_reason, first=not state.started)
        body = call.envelope(fmt.chunk_object, [choice])
        if call.include_usage:
            body["usage"] = None
        chunks.append(sse(body))
        state.started, state.finished = True, o.finish_reason is not None
    return chunks
