"""The in-process engine as a backend: one AsyncEngine per model name and engine options per process, shared by every
architecture."""
from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from typing import Any

from lamina.backends.base import Backend, Completion, Completions, Messages, TokenLP
from lamina.backends.branching import Branching, Step, Steps, TreeBlocks
from lamina.engine.outputs import DeltaJoiner, OutputKind
from lamina.engine.sampling_params import SamplingParams
from lamina.errors import InvalidRequestError

_ENGINES: dict[str, list[Any]] = {}  # model name -> the AsyncEngines loaded for it (one per set of engine options)
_SOURCES: dict[str, str] = {}  # a registered name -> the model its engine loaded (a served alias may not be loadable)
_LOCK = threading.Lock()
_log = logging.getLogger(__name__)


def register_engine(name: str, engine: Any) -> None:
    """Share an AsyncEngine built elsewhere (e.g. by the server) under a model name: `shared_engine(name, **options)`
    reuses it when the options are none or agree with the engine's own."""
    with _LOCK:
        engines = _ENGINES.setdefault(name, [])
        if not any(e is engine for e in engines):
            engines.append(engine)
        _SOURCES.setdefault(name, engine.model_name)


def shared_engine(name: str, **engine_options: Any):
    """The AsyncEngine for model `name` whose engine configuration agrees with every option given (no options: the
    first one loaded); a new one if none does. Two engines of one model hold their own weights and KV cache."""
    with _LOCK:
        engines = _ENGINES.setdefault(name, [])
        for engine in engines:
            if _agrees(engine, engine_options):
                return engine
        if engines:
            _log.warning("model %r: engine options %s differ from those of its loaded engine; loading another "
                         "(its own weights and KV cache)", name, engine_options)
        from lamina.engine.engine import AsyncEngine

        engine = AsyncEngine(_SOURCES.get(name, name), **engine_options)
        engines.append(engine)
        return engine


def _agrees(engine: Any, options: dict[str, Any]) -> bool:
    config = engine.engine.config  # the EngineConfig it was built with
    return all(hasattr(config, key) and getattr(config, key) == value for key, value in options.items())


def shutdown_all() -> None:
    with _LOCK:
        engines = list({id(e): e for group in _ENGINES.values() for e in group}.values())
        _ENGINES.clear()
        _SOURCES.clear()
    for engine in engines:
        engine.shutdown()


class LocalBackend(Backend, Branching):
    """Branches (step-level search) run on the engine's branch API: a handle is a branch id, children share their
    parent's KV blocks copy-on-write."""

    kind = "local"

    def __init__(self, model: str = "default", max_concurrency: int = 64, engine: dict[str, Any] | None = None) -> None:
        super().__init__(model, max_concurrency)
        self._engine_options = dict(engine or {})
        self._engine = None

    async def engine(self):
        if self._engine is None:
            self._engine = await asyncio.to_thread(shared_engine, self.model, **self._engine_options)
        return self._engine

    def count_tokens(self, text: str) -> int:
        if self._engine is None:
            return super().count_tokens(text)
        return len(self._engine.tokenizer.encode(text))

    async def _prompt(self, messages: Messages | None, prompt: str | None) -> str:
        engine = await self.engine()
        if messages is not None:
            return engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        if prompt is None:
            raise InvalidRequestError("a call needs messages or a prompt")
        return prompt

    async def _complete(self, messages: Messages | None, prompt: str | None, params: SamplingParams) -> Completions:
        engine = await self.engine()
        text = await self._prompt(messages, prompt)
        start, final = time.perf_counter(), None
        async for final in engine.generate(text, params, output_kind=OutputKind.FINAL_ONLY):
            pass
        assert final is not None
        tok = engine.tokenizer
        items = [Completion(o.text, len(o.token_ids), _logprobs(o.logprobs, tok), o.finish_reason, list(o.token_ids))
                 for o in final.outputs]
        return Completions(items, len(final.prompt_token_ids), time.perf_counter() - start,
                           cached_prompt_tokens=final.num_cached_tokens)

    async def _first_finish(self, messages: Messages | None, prompt: str | None,
                            params: SamplingParams) -> Completions:
        engine = await self.engine()
        text = await self._prompt(messages, prompt)
        start, joiner, prompt_tokens, cached = time.perf_counter(), DeltaJoiner(), 0, 0
        stream = engine.generate(text, params)
        try:
            async for delta in stream:
                prompt_tokens, cached = len(delta.prompt_token_ids), delta.num_cached_tokens
                for o in delta.outputs:
                    joiner.add(o)
                if any(o.finish_reason is not None for o in delta.outputs):
                    break
        finally:
            await stream.aclose()
        done = [o for o in joiner.outputs() if o.finish_reason is not None]
        winner = min(done, key=lambda o: (len(o.token_ids), o.index))
        item = Completion(winner.text, len(winner.token_ids), _logprobs(winner.logprobs, engine.tokenizer),
                          winner.finish_reason, list(winner.token_ids))
        return Completions([item], prompt_tokens, time.perf_counter() - start, joiner.num_tokens, cached)


    # Branches (lamina/backends/branching.py) on the engine's branch API (lamina/engine/branches.py).

    async def open_tree(self, messages: Messages) -> str:
        engine = await self.engine()
        start = time.perf_counter()
        root = await engine.open_branch(await self._prompt(messages, None))
        self.usage.add_call(self.identity, len(root.token_ids), 0, time.perf_counter() - start, cached=False)
        return root.branch_id

    async def extend(self, handle: str, params: SamplingParams) -> Steps:
        """The parent's tokens are the prompt of the extension; all but its last are already in the KV cache when
        it is resident (counted as cached prompt tokens), none when it was dropped under memory pressure."""
        engine = await self.engine()
        start = time.perf_counter()
        async with self.slots():
            parent = await engine.branch(handle)
            children = await engine.extend_branch(handle, params)
        cached = len(parent.token_ids) - 1 if parent.resident else 0
        tok = engine.tokenizer
        steps = Steps([Step(c.branch_id, c.step_text, list(c.step_token_ids), _logprobs(c.step_logprobs, tok),
                            c.finish_reason, len(c.step_token_ids)) for c in children],
                      len(parent.token_ids), cached, 1, time.perf_counter() - start)
        self.usage.add_call(self.identity, steps.prompt_tokens, steps.completion_tokens, steps.seconds, cached=False,
                            cached_prompt_tokens=cached)
        return steps

    async def release(self, handle: str) -> None:
        await (await self.engine()).release_branch(handle)

    async def tree_blocks(self, handles: list[str]) -> TreeBlocks:
        usage = await (await self.engine()).branch_blocks(handles)
        return TreeBlocks(usage.num_used_blocks, usage.num_copy_per_path_blocks)


def _logprobs(logprobs, tokenizer) -> list[TokenLP] | None:
    if logprobs is None:
        return None
    result = []
    for lp in logprobs:
        top: dict[str, float] = {}
        for token_id, value in lp.top.items():
            key = tokenizer.id_to_token(token_id)
            top[key] = value if key not in top else _logaddexp(top[key], value)
        result.append(TokenLP(tokenizer.id_to_token(lp.token_id), lp.logprob, top))
    return result


def _logaddexp(a: float, b: float) -> float:
    hi = max(a, b)
    return hi + math.log(math.exp(a - hi) + math.exp(b - hi))
