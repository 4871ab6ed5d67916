"""Caller: every model call of one query goes through here: seed, budget, cache, backend, usage, trace."""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from lamina.accounting import Usage
from lamina.backends.base import Backend, Completion, Messages
from lamina.budget import BudgetGuard, Estimate
from lamina.cache import CallCache, call_key
from lamina.engine.sampling_params import SamplingParams

TEMPLATE_TOKENS = 48  # chat template overhead allowed for in estimates (system prompt, role markers)


@dataclass(slots=True)
class ModelHandle:
    alias: str
    backend: Backend
    defaults: dict[str, Any] = field(default_factory=dict)


def derive_seed(*parts: Any) -> int:
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big") & (2**62 - 1)


class Caller:
    def __init__(self, models: dict[str, ModelHandle], cache: CallCache | None, guard: BudgetGuard,
                 query_key: str, base_seed: int = 0) -> None:
        self.models = models
        self.default_alias = next(iter(models))
        self.cache = cache
        self.guard = guard
        self.query_key = query_key
        self.base_seed = base_seed
        self.usage = Usage()
        self.trace: list[dict[str, Any]] = []
        self.keys: dict[str, int] = {}  # component name -> its content key in this query (set by the Runner)

    def handle(self, alias: str | None) -> ModelHandle:
        return self.models[alias or self.default_alias]

    def params(self, alias: str | None, builtin: dict[str, Any], overrides: dict[str, Any],
               judge: bool = False) -> dict[str, Any]:
        """Sampling settings of a call, later sources winning: a generator's built-in settings, then the model
        alias's `params`, then the component's overrides; a judge's (`judge=True`) built-in settings instead win
        over the alias's generation defaults (a judge samples at its temperature 0 whatever the alias says);
        alias settings the judge does not fix (e.g. stop) still apply."""
        defaults = self.handle(alias).defaults
        return {**defaults, **builtin, **overrides} if judge else {**builtin, **defaults, **overrides}

    def estimate(self, alias: str | None, prompt_text: str, max_tokens: int, samples: int = 1, calls: int = 1) -> Estimate:
        prompt = self.handle(alias).backend.count_tokens(prompt_text) + TEMPLATE_TOKENS
        return Estimate(calls, calls * (prompt + samples * max_tokens))

    def note(self, component: str, **event: Any) -> None:
        self.trace.append({"event": "note", "component": component, **event})

    async def call(self, component: str, alias: str | None, messages: Messages, *, samples: int = 1,
                   call_index: int = 0, first_finish: bool = False, params: dict[str, Any]) -> list[Completion]:
        handle = self.handle(alias)
        backend = handle.backend
        values = dict(params)
        if values.get("seed") is None:
            identity = self.keys.get(component, component)  # a component run outside a Runner: its name
            values["seed"] = derive_seed(self.base_seed, self.query_key, identity, call_index)
        sp = SamplingParams(**values, n=samples)
        mode = "first_finish" if first_finish else "sample"
        keys = [call_key(backend.identity, messages, None, sp, i, mode) for i in range(1 if first_finish else samples)]
        need = self.estimate(alias, _text(messages), sp.max_tokens, samples) + Estimate(0, 6 * len(messages))
        self.guard.reserve(need, f"component {component!r}")
        start = time.perf_counter()
        hit = self.cache.get_many(keys) if self.cache is not None else None
        try:
            if hit is not None:
                got, hit.seconds = hit, time.perf_counter() - start
            else:
                got = await (backend.first_finish if first_finish else backend.complete)(messages, None, sp)
                if self.cache is not None:
                    self.cache.put_many(backend.identity, keys, got)
        except BaseException:
            self.guard.settle(need, 0, 0)
            raise
        prompt_tokens, completion_tokens, outs = got.prompt_tokens, got.completion_tokens, list(got)
        self.guard.settle(need, got.requests, prompt_tokens + completion_tokens)  # the budget counts cost, cached or not
        self.usage.add_call(component, prompt_tokens, completion_tokens, got.seconds, cached=hit is not None,
                            cached_prompt_tokens=got.cached_prompt_tokens, calls=got.requests)
        self.trace.append({"event": "call", "component": component, "model": handle.alias, "backend": backend.identity,
                           "messages": messages, "params": sp.to_dict(), "outputs": [c.text for c in outs],
                           "finish_reasons": [c.finish_reason for c in outs], "prompt_tokens": prompt_tokens,
                           "completion_tokens": completion_tokens, "cached_prompt_tokens": got.cached_prompt_tokens,
                           "seconds": round(got.seconds, 4), "cached": hit is not None})
        return outs


def _text(messages: Messages) -> str:
    return "\n".join(str(m.get("content", "")) for m in messages)
