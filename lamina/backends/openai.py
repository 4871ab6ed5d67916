"""Any OpenAI-compatible endpoint (vLLM, SGLang, llama.cpp server, hosted APIs, `lamina serve`) over httpx."""
from __future__ import annotations

import asyncio
import json
import os
import random
import re
import time
from typing import Any

import httpx

from lamina.backends.base import Backend, Completion, Completions, Messages, TokenLP
from lamina.backends.branching import Branching, Step, Steps
from lamina.engine.sampling_params import SamplingParams
from lamina.errors import BackendError

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
# OpenAI's sampling fields, always sent (an OpenAI server's max_tokens default is unbounded). Every other
# SamplingParams field is sent only when it differs from its default, so a plain OpenAI server sees no extra keys:
# seed and stop (OpenAI's), top_k, min_p, repetition_penalty, stop_token_ids, ignore_eos and
# include_stop_str_in_output (vLLM's extra fields, which `lamina serve` accepts too); logprobs in each endpoint's shape.
ALWAYS_SENT = ("n", "temperature", "top_p", "max_tokens")


class OpenAIBackend(Backend, Branching):
    """Branches (step-level search) are emulated: a node is the conversation plus the assistant's partial reply, and
    each extension is one /v1/chat/completions request continuing it (`continue_final_message: true`,
    `add_generation_prompt: false`, as vLLM and `lamina serve` accept); the server's prefix cache shares the prefix."""

    kind = "openai"

    def __init__(self, model: str, base_url: str = "http://127.0.0.1:8000/v1", api_key_env: str | None = None,
                 max_concurrency: int = 8, timeout_s: float = 120.0, max_retries: int = 4, backoff_s: float = 0.5,
                 supports_n: bool | None = None) -> None:
        super().__init__(model, max_concurrency)
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.timeout_s, self.max_retries, self.backoff_s = timeout_s, max_retries, backoff_s
        self.supports_n = supports_n  # None: try n, fall back to parallel calls if the server refuses
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._nodes: dict[str, tuple[Messages, str]] = {}  # branch handle -> (conversation, partial reply)
        self._trees = 0

    @property
    def identity(self) -> str:
        return f"openai:{self.base_url}:{self.model}"

    def _headers(self) -> dict[str, str]:
        if not self.api_key_env:
            return {}
        key = os.environ.get(self.api_key_env)
        if not key:
            raise BackendError(f"backend {self.identity}: environment variable {self.api_key_env} (api_key_env) is not set")
        return {"Authorization": f"Bearer {key}"}

    def client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:  # a client's pool belongs to one event loop
            self._client = httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout_s, headers=self._headers())
            self._client_loop = loop
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _complete(self, messages: Messages | None, prompt: str | None, params: SamplingParams,
                        extra: dict[str, Any] | None = None) -> Completions:
        """`extra`: request fields sent as they are (e.g. continue_final_message)."""
        start = time.perf_counter()
        chat = messages is not None
        if params.n == 1:
            return self._parse(await self._post(messages, prompt, params, extra), chat, start)
        parts: list[Completions] = []
        if self.supports_n is not False:
            try:
                first = self._parse(await self._post(messages, prompt, params, extra), chat, start)
            except _NRefused:
                first = Completions(requests=1)  # the refused request was made: it counts as a call
            if len(first) == params.n:
                self.supports_n = True
                return first
            self.supports_n = False
            # a server that ignores n answered fewer samples: keep (and count) them, ask only for the rest
            parts.append(Completions(first[: params.n], first.prompt_tokens, first.seconds, first.completion_tokens,
                                     first.cached_prompt_tokens, first.requests))
        have = len(parts[0]) if parts else 0
        rest = await asyncio.gather(*(self._post(messages, prompt, _single(params, i), extra)
                                      for i in range(have, params.n)))
        return _join(parts + [self._parse(r, chat, start) for r in rest], start)

    async def _first_finish(self, messages: Messages | None, prompt: str | None,
                            params: SamplingParams) -> Completions:
        start = time.perf_counter()
        tasks = [asyncio.create_task(self._post(messages, prompt, _single(params, i))) for i in range(params.n)]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            first = min(done, key=tasks.index)
            out = self._parse(first.result(), messages is not None, start)
            out.requests = len(tasks)  # every request sent is a call, the cancelled ones too
            return out
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # Branches (lamina/backends/branching.py), emulated over chat completions.

    async def open_tree(self, messages: Messages) -> str:
        self._trees += 1
        handle = f"tree-{self._trees}"
        self._nodes[handle] = (list(messages), "")
        return handle

    async def extend(self, handle: str, params: SamplingParams) -> Steps:
        if handle not in self._nodes:
            raise BackendError(f"backend {self.identity}: branch {handle!r} is unknown or was released")
        base, partial = self._nodes[handle]  # kept: the parent may be released while the request is in flight
        messages, extra = base, None
        if partial:  # continue the partial reply; the root's reply starts after the generation prompt
            messages = [*messages, {"role": "assistant", "content": partial}]
            extra = {"continue_final_message": True, "add_generation_prompt": False}
        async with self.slots():
            out = self._record(await self._complete(messages, None, params, extra))
        steps = Steps([], out.prompt_tokens, out.cached_prompt_tokens, out.requests, out.seconds)
        for i, c in enumerate(out):
            child = f"{handle}.{i}"
            self._nodes[child] = (base, partial + c.text)
            steps.append(Step(child, c.text, c.token_ids, c.logprobs, c.finish_reason, c.num_tokens))
        return steps

    async def release(self, handle: str) -> None:
        self._nodes.pop(handle, None)

    def _body(self, messages: Messages | None, prompt: str | None, params: SamplingParams,
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, **{name: getattr(params, name) for name in ALWAYS_SENT},
                                **(extra or {})}
        body.update((name, value) for name, value in params.changed().items()
                    if name not in ("logprobs", "structured_outputs"))
        body.update(_constraint_fields(params.structured_outputs))
        if messages is not None:
            body["messages"] = messages
            if params.logprobs is not None:
                body["logprobs"] = True
                body["top_logprobs"] = params.logprobs
        else:
            body["prompt"] = prompt
            if params.logprobs is not None:
                body["logprobs"] = params.logprobs
        return body

    async def _post(self, messages: Messages | None, prompt: str | None, params: SamplingParams,
                    extra: dict[str, Any] | None = None) -> dict[str, Any]:
        path = "/chat/completions" if messages is not None else "/completions"
        body = self._body(messages, prompt, params, extra)
        for attempt in range(self.max_retries + 1):
            try:
                response = await self.client().post(path, json=body)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                if attempt == self.max_retries:
                    raise BackendError(f"backend {self.identity}: {type(exc).__name__} after {attempt + 1} attempts: {exc}")
                await asyncio.sleep(self._delay(attempt, None))
                continue
            if response.status_code == 200:
                return response.json()
            if response.status_code in (400, 422):
                rejected = _rejected_field(response, body)
                if rejected == "n" and params.n > 1:
                    raise _NRefused()
                if rejected is not None:
                    raise BackendError(f"backend {self.identity}: the server rejected field {rejected!r} "
                                       f"(HTTP {response.status_code}: {_error_message(response)[:300]})")
            if response.status_code not in RETRY_STATUS or attempt == self.max_retries:
                raise BackendError(f"backend {self.identity}: HTTP {response.status_code} on {path} "
                                   f"after {attempt + 1} attempt(s): {response.text[:300]}")
            await asyncio.sleep(self._delay(attempt, response.headers.get("retry-after")))
        raise AssertionError("unreachable")

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(float(retry_after), 30.0)
            except ValueError:
                pass
        return self.backoff_s * (2 ** attempt) * (0.5 + random.random() / 2)

    def _parse(self, data: dict[str, Any], chat: bool, start: float) -> Completions:
        items = []
        for choice in sorted(data.get("choices", []), key=lambda c: c.get("index", 0)):
            text = ((choice.get("message") or {}).get("content") or "") if chat else choice.get("text", "")
            logprobs = _chat_logprobs(choice.get("logprobs")) if chat else _text_logprobs(choice.get("logprobs"))
            items.append(Completion(text, 0, logprobs, choice.get("finish_reason")))
        usage = data.get("usage") or {}
        completion_tokens = int(usage.get("completion_tokens") or 0)
        for item in items:
            item.num_tokens = len(item.logprobs) if item.logprobs else max(1, completion_tokens // max(1, len(items)))
        cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
        return Completions(items, int(usage.get("prompt_tokens") or 0), time.perf_counter() - start,
                           completion_tokens or None, cached)


class _NRefused(Exception):
    pass


_NOT_SAMPLING = ("model", "messages", "prompt")


def _error(response: httpx.Response) -> dict[str, Any]:
    """An error response's OpenAI `error` object ({} when the body is not one)."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return {}
    return error if isinstance(error, dict) else {}


def _error_message(response: httpx.Response) -> str:
    return str(_error(response).get("message") or response.text)


def _rejected_field(response: httpx.Response, body: dict[str, Any]) -> str | None:
    """The request field an error response names: OpenAI's `error.param`, else a sent sampling field named in the
    message as a word (quoted if it is one letter, as n)."""
    param = _error(response).get("param")
    if isinstance(param, str) and param.split(".")[0] in body:
        return param.split(".")[0]
    text = _error_message(response)
    for name in body:
        word = rf"[\"'`]{name}[\"'`]" if len(name) == 1 else rf"(?<![\w.]){re.escape(name)}(?![\w])"
        if name not in _NOT_SAMPLING and re.search(word, text):
            return name
    return None


def _single(params: SamplingParams, index: int) -> SamplingParams:
    seed = None if params.seed is None else params.seed + index
    return params.replace(n=1, seed=seed)


def _join(parts: list[Completions], start: float) -> Completions:
    items = [c for part in parts for c in part]
    spent = sum(p.completion_tokens for p in parts)
    return Completions(items, sum(p.prompt_tokens for p in parts), time.perf_counter() - start, spent,
                       sum(p.cached_prompt_tokens for p in parts), sum(p.requests for p in parts))


def _chat_logprobs(raw: dict[str, Any] | None) -> list[TokenLP] | None:
    if not raw or raw.get("content") is None:
        return None
    return [TokenLP(t["token"], float(t["logprob"]), {a["token"]: float(a["logprob"]) for a in t.get("top_logprobs") or []})
            for t in raw["content"]]


def _text_logprobs(raw: dict[str, Any] | None) -> list[TokenLP] | None:
    if not raw or not raw.get("tokens"):
        return None
    tops = raw.get("top_logprobs") or [{}] * len(raw["tokens"])
    return [TokenLP(tok, float(lp or 0.0), {k: float(v) for k, v in (top or {}).items()})
            for tok, lp, top in zip(raw["tokens"], raw.get("token_logprobs") or [], tops)]


def _constraint_fields(structured: dict[str, Any] | None) -> dict[str, Any]:
    """SamplingParams.structured_outputs as request fields: OpenAI's response_format for JSON (schema or any object),
    vLLM's guided_regex / guided_choice otherwise."""
    if not structured:
        return {}
    if structured.get("json_object"):
        return {"response_format": {"type": "json_object"}}
    if structured.get("json") is not None:
        schema = structured["json"]
        schema = json.loads(schema) if isinstance(schema, str) else schema
        return {"response_format": {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}}
    if structured.get("regex") is not None:
        return {"guided_regex": structured["regex"]}
    return {"guided_choice": structured["choice"]}
