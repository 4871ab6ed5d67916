"""Runs a validated spec: layer by layer, every component of a layer concurrently, budget checked first."""
from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lamina.accounting import Usage
from lamina.budget import BudgetGuard, Estimate
from lamina.cache import CallCache
from lamina.calls import Caller, ModelHandle, derive_seed
from lamina.errors import BudgetExceededError, InvalidRequestError
from lamina.spec import ArchSpec
from lamina.techniques import Candidate, State, Technique, build_technique


@dataclass(slots=True)
class LayerResult:
    """What one layer passed on: its candidates (its components' outputs together, in component order; the
    input unchanged when no component produced any)."""

    index: int
    components: list[str]  # display names
    candidates: list[Candidate]
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "components": self.components, "seconds": round(self.seconds, 4),
                "candidates": [c.to_dict() for c in self.candidates]}


@dataclass(slots=True)
class ArchResult:
    """One query's answer. `final`: the resolved candidates (answer first); `candidates`: their texts;
    `layers`: every layer that ran (layers skipped by the budget are absent); `trace`: debug events only."""

    answer: str
    candidates: list[str]
    usage: Usage
    trace: list[dict[str, Any]]
    seconds: float = 0.0
    final: list[Candidate] = field(default_factory=list)
    stopped_by_budget: bool = False
    layers: list[LayerResult] = field(default_factory=list)

    def first_layer_samples(self) -> list[Candidate]:
        """The candidates the first layer drew: the raw samples of a sampling architecture (pass@k, per-sample
        scores); [] when no layer ran."""
        return list(self.layers[0].candidates) if self.layers else []

    def to_dict(self) -> dict[str, Any]:
        return {"answer": self.answer, "candidates": self.candidates, "usage": self.usage.to_dict(),
                "seconds": round(self.seconds, 4), "stopped_by_budget": self.stopped_by_budget,
                "layers": [layer.to_dict() for layer in self.layers]}


def check_messages(messages: Any) -> list[dict[str, str]]:
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("messages must be a non-empty list of {role, content} dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise InvalidRequestError(f"messages[{i}] must be a dict with string 'role' and 'content', got {m!r}")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def component_names(spec: ArchSpec) -> list[list[str]]:
    names = [[c.name or f"L{i}.{j}.{c.type}" for j, c in enumerate(layer)] for i, layer in enumerate(spec.layers)]
    flat = [n for layer in names for n in layer]
    dupes = sorted({n for n in flat if flat.count(n) > 1})
    if dupes:
        raise InvalidRequestError(f"component names must be unique; repeated: {dupes}")
    return names


def component_identities(spec: ArchSpec, models: dict[str, ModelHandle]) -> list[list[int]]:
    """Each component's identity by content, not position: its spec without the display `name` (renaming never
    changes samples), each model alias replaced by what it names (backend identity and sampling params), and its
    index among identical siblings in its layer (two identical components in one layer sample differently).
    With the component's inputs (Runner.content_key) it seeds every call, and so keys the call cache: adding or
    removing a layer leaves every other component whose inputs are unchanged drawing the same samples."""
    first = next(iter(models))

    def model(alias: str | None) -> list[Any]:
        handle = models[alias or first]
        return [handle.backend.identity, handle.defaults]

    identities = []
    for layer in spec.layers:
        seen: dict[int, int] = {}
        row = []
        for comp in layer:
            content = comp.model_dump(exclude={"name", "model", "models"})
            content["model"] = [model(alias) for alias in comp.aliases()]
            same = derive_seed(content)
            row.append(derive_seed(same, seen.get(same, 0)))
            seen[same] = seen.get(same, 0) + 1
        identities.append(row)
    return identities


class Runner:
    def __init__(self, spec: ArchSpec, models: dict[str, ModelHandle], cache: CallCache | None) -> None:
        self.spec = spec
        self.models = models
        self.cache = cache
        self.layers: list[list[Technique]] = [
            [build_technique(comp, name) for comp, name in zip(layer, names)]
            for layer, names in zip(spec.layers, component_names(spec))
        ]
        self.identities = component_identities(spec, models)
        self._ask_for_logprobs()

    def _ask_for_logprobs(self) -> None:
        """Every component learns the most top logprobs any later layer needs of its candidates (a vote weighted
        by self-certainty needs its generator's top-k); sampling components request them (samples unchanged)."""
        needed: int | None = None
        for layer in reversed(self.layers):
            for technique in layer:
                technique.logprobs_downstream = needed
            wants = [k for k in (t.logprobs_needed() for t in layer) if k is not None]
            needed = max(wants + ([needed] if needed is not None else []), default=None)

    async def run(self, messages: Any, tests: list[str] | None = None, seed: int | None = None) -> ArchResult:
        """`seed` varies the derived per-call seeds (e.g. to get n different runs of one query)."""
        messages = check_messages(messages)
        query_key = derive_seed(messages, tests) if seed is None else derive_seed(messages, tests, seed)
        budget = self.spec.budget
        caller = Caller(self.models, self.cache, BudgetGuard(budget.max_calls, budget.max_tokens), str(query_key),
                        self.spec.seed)
        state = State(messages, caller, [], list(tests) if tests else None)
        start, stopped, layers = time.perf_counter(), False, []
        for i, layer in enumerate(self.layers):
            if not self._affordable(state, i, layer):
                stopped = True
                break
            layers.append(await self._run_layer(state, i, layer))
        final = self._resolve(state, query_key)
        return ArchResult(final[0].text if final else "", [c.text for c in final], caller.usage, caller.trace,
                          time.perf_counter() - start, final, stopped, layers)

    def _affordable(self, state: State, index: int, layer: list[Technique]) -> bool:
        need = sum((t.estimate(state) for t in layer), Estimate())
        try:
            state.calls.guard.check(need, f"layers[{index}] ({', '.join(t.name for t in layer)})")
        except BudgetExceededError as exc:
            if self.spec.budget.on_exceed == "stop" and state.candidates:
                state.calls.note("runner", budget_stop=str(exc), layer=index,
                                 rule="skipped the remaining layers; answered from the current candidates")
                return False
            raise
        return True

    @staticmethod
    def content_key(identity: int, technique: Technique, state: State) -> int:
        """What seeds a component's calls in this query (the query itself is in the Caller's query_key): its
        identity and the candidates it receives, by content (not by the name of the component that made them);
        generate and first_finish read only the query, so what precedes them does not change their samples."""
        inputs = [c.content() for c in state.candidates] if technique.reads_candidates else None
        return derive_seed(identity, inputs)

    async def _run_layer(self, state: State, index: int, layer: list[Technique]) -> LayerResult:
        start = time.perf_counter()
        for technique, identity in zip(layer, self.identities[index]):
            state.calls.keys[technique.name] = self.content_key(identity, technique, state)
        results = await asyncio.gather(*(t.run(state) for t in layer))
        produced = [r for r in results if r is not None]
        if produced:
            state.candidates = [c for r in produced for c in r]
        result = LayerResult(index, [t.name for t in layer], list(state.candidates), time.perf_counter() - start)
        state.calls.trace.append({"event": "layer", "layer": index, "components": result.components,
                                  "candidates": len(result.candidates), "seconds": round(result.seconds, 4)})
        return result

    def _resolve(self, state: State, query_key: int) -> list[Candidate]:
        cands = list(state.candidates)
        rule = self.spec.resolve
        if len(cands) <= 1 or rule == "first":
            return cands
        if rule == "highest_score":
            cands.sort(key=lambda c: tuple(-(v if v is not None else -1e9)
                                           for v in (c.score, c.pass_rate, c.mean_logprob)))
        elif rule in ("shortest", "longest"):
            cands.sort(key=lambda c: len(c.text) if rule == "shortest" else -len(c.text))
        elif rule == "random":
            pick = random.Random(derive_seed(self.spec.seed, query_key, "resolve")).randrange(len(cands))
            cands.insert(0, cands.pop(pick))
        state.calls.note("runner", resolve=rule, candidates=len(cands))
        return cands


def write_trace(path: str | Path, result: ArchResult, query: Any, arch_name: str) -> None:
    """Append one JSONL line per trace event, each tagged with the query and architecture."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        head = {"event": "query", "arch": arch_name, "query": query, **result.to_dict()}
        f.write(json.dumps(head, ensure_ascii=False) + "\n")
        for event in result.trace:
            f.write(json.dumps({"arch": arch_name, **event}, ensure_ascii=False, default=str) + "\n")
