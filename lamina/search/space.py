"""Search spaces: YAML distributions over architecture-spec fields, a grammar of allowed layer stacks, and constraints.

A space is validated as a whole before any trial runs (every choice of every field is checked against the spec's own
validation), so a bad space is one error line naming the file, the field and the value. `sample(trial)` turns an
Optuna trial into a spec dict; an invalid or over-budget combination raises `optuna.TrialPruned`.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lamina.errors import SpecError
from lamina.spec import COMPONENT_TYPES, parse_spec, read_spec_file
from lamina.spec import _describe as describe_error  # the spec's one wording of a pydantic error
from lamina.techniques.search import SearchSpec, search_cost

Value = str | int | float | bool | None  # what an Optuna categorical choice may be
# Techniques that select among candidates: over one candidate they change nothing, so such a stack is redundant.
SELECTORS = frozenset({"vote", "rank", "reward", "verify", "unit_test"})
FIRST_LAYER_TYPES = frozenset({"generate", "program", "first_finish", "search"})  # the layers that produce candidates from the query alone
DEFAULT_SPACE = "default"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Range(_Strict):
    """A numeric range: ints when low, high (and step) are ints, else floats; `step` makes it discrete (grid-able)."""
    low: float
    high: float
    step: float | None = Field(None, gt=0)
    log: bool = False

    @staticmethod
    def is_int(raw: dict[str, Any]) -> bool:
        """Whether the YAML gave low, high (and step, if any) as integers."""
        return all(isinstance(raw.get(k, 1), int) and not isinstance(raw.get(k), bool) for k in ("low", "high", "step"))


@dataclass(slots=True)
class Dist:
    """One field's distribution: a fixed value, a list of choices, or a Range."""
    choices: list[Value] | None = None
    range: Range | None = None
    integer: bool = False
    fixed: Any = None

    @classmethod
    def parse(cls, raw: Any) -> "Dist":
        if isinstance(raw, dict) and raw and set(raw) <= {"low", "high", "step", "log"}:
            rng = Range.model_validate(raw)
            if rng.low > rng.high:
                raise ValueError(f"low {rng.low} is above high {rng.high}")
            return cls(range=rng, integer=rng.is_int(raw))
        if isinstance(raw, list):
            if not raw:
                raise ValueError("a list of choices needs at least one value")
            bad = [v for v in raw if not isinstance(v, (str, int, float, bool, type(None)))]
            if bad:
                raise ValueError(f"choices must be strings, numbers, booleans or null, got {bad[0]!r}")
            return cls(choices=list(raw))
        return cls(fixed=raw)

    def probe_values(self) -> list[Any]:
        """The values that stand for the whole distribution when validating it against the spec."""
        if self.choices is not None:
            return self.choices
        if self.range is not None:
            cast = int if self.integer else float
            return [cast(self.range.low), cast(self.range.high)]
        return [self.fixed]

    def grid(self, name: str, greedy_points: int = 0) -> list[Any]:
        """Every value, for grid search; a continuous range needs a step (`greedy_points` > 0: that many points)."""
        if self.choices is not None:
            return list(self.choices)
        if self.range is None:
            return [self.fixed]
        low, high, step = self.range.low, self.range.high, self.range.step
        if step is None:
            if not greedy_points:
                raise SpecError(f"{name}: a grid needs choices or a range with a step, got low={low} high={high}")
            step = (high - low) / max(1, greedy_points - 1) or 1.0
        count = int(round((high - low) / step)) + 1
        values = [low + i * step for i in range(count) if low + i * step <= high + 1e-9]
        return [int(round(v)) if self.integer else round(v, 10) for v in values]

    def suggest(self, trial: Any, name: str) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(name, self.choices)
        if self.range is None:
            return self.fixed
        r = self.range
        if self.integer:
            return trial.suggest_int(name, int(r.low), int(r.high), step=int(r.step or 1), log=r.log)
        return trial.suggest_float(name, r.low, r.high, step=r.step, log=r.log)


class StackRule(_Strict):
    layers: list[str] = Field(min_length=1)
    requires: Literal["tests"] | None = None  # "tests": only for tasks scored by executing tests (code)
    name: str | None = None

    @property
    def key(self) -> str:
        return self.name or ">".join(self.layers)


class Constraints(_Strict):
    max_calls: int | None = Field(None, ge=1)  # model calls per query
    max_tokens: int | None = Field(None, ge=1)  # estimated prompt + completion tokens per query (upper bound)
    prompt_tokens: int = Field(160, ge=1)  # the query's prompt, in tokens, assumed by the token estimate


class SpaceSpec(_Strict):
    name: str = Field(min_length=1)
    description: str = ""
    models: dict[str, dict[str, Any]] = Field(min_length=1)  # model aliases, exactly as in an architecture spec
    stacks: list[StackRule] = Field(min_length=1)
    components: dict[str, dict[str, Any]] = Field(default_factory=dict)  # type -> field -> distribution
    resolve: Any = "first"
    constraints: Constraints = Field(default_factory=Constraints)
    seed: int = 0  # every trial's spec seed: the same sampling seeds per example in every trial

    @field_validator("stacks", mode="before")
    @classmethod
    def _lists_are_stacks(cls, stacks: Any) -> Any:
        if isinstance(stacks, list):
            return [{"layers": s} if isinstance(s, list) else s for s in stacks]
        return stacks


class SearchSpace:
    """A validated space. `sample(trial, has_tests)` -> spec dict; `grid(has_tests)` -> Optuna GridSampler space."""

    def __init__(self, spec: SpaceSpec, source: str, raw: dict[str, Any]) -> None:
        self.spec, self.source, self.raw = spec, source, raw
        self.dists: dict[str, dict[str, Dist]] = {}
        for ctype, fields in spec.components.items():
            self.dists[ctype] = {}
            for fname, value in fields.items():
                try:
                    self.dists[ctype][fname] = Dist.parse(value)
                except (ValueError, ValidationError) as exc:
                    raise self.error(f"components.{ctype}.{fname}", value, _reason(exc)) from None
        try:
            self.resolve = Dist.parse(spec.resolve)
        except (ValueError, ValidationError) as exc:
            raise self.error("resolve", spec.resolve, _reason(exc)) from None
        self._check()

    @property
    def name(self) -> str:
        return self.spec.name

    def error(self, field: str, value: Any, reason: str) -> SpecError:
        return SpecError(f"{self.source}: {field}: {reason} (got {value!r})")

    # ---- validation --------------------------------------------------------------------------------------------
    def _check(self) -> None:
        keys = [s.key for s in self.spec.stacks]
        for i, stack in enumerate(self.spec.stacks):
            for j, ctype in enumerate(stack.layers):
                if ctype not in COMPONENT_TYPES:
                    raise self.error(f"stacks[{i}].layers[{j}]", ctype, f"unknown layer type; expected one of "
                                     f"{', '.join(COMPONENT_TYPES)}")
            if stack.layers[0] not in FIRST_LAYER_TYPES:
                raise self.error(f"stacks[{i}].layers[0]", stack.layers[0],
                                 f"a stack starts with a layer that samples ({' or '.join(sorted(FIRST_LAYER_TYPES))})")
            if keys.count(stack.key) > 1:
                raise self.error(f"stacks[{i}]", stack.key, "repeats another stack")
        for ctype in self.dists:
            if ctype not in COMPONENT_TYPES:
                raise self.error(f"components.{ctype}", ctype, f"unknown component type; expected one of "
                                 f"{', '.join(COMPONENT_TYPES)}")
        self._probe("models", None, None, self.spec.models, {"models": self.spec.models})
        for ctype, fields in self.dists.items():
            for fname, dist in fields.items():
                for value in dist.probe_values():
                    self._probe(f"components.{ctype}.{fname}", ctype, fname, value,
                                {"layers": _probe_layers({"type": ctype, fname: value})})
        for value in self.resolve.probe_values():
            self._probe("resolve", None, None, value, {"resolve": value})

    def _probe(self, field: str, ctype: str | None, fname: str | None, value: Any, part: dict[str, Any]) -> None:
        data = {"name": "probe", "models": self.spec.models, "layers": _probe_layers({"type": "generate"}), **part}
        try:
            parse_spec(data, "probe")
        except SpecError as exc:
            lines = str(exc).splitlines()
            detail = lines[-1].strip()
            reason = detail.split(": ", 1)[1] if ": " in detail else detail
            if "Extra inputs are not permitted" in reason:
                reason = f"{ctype} has no field {fname!r}"
            raise self.error(field, value, reason.replace(" (got ", " (value ")) from None

    # ---- sampling ----------------------------------------------------------------------------------------------
    def stacks(self, has_tests: bool) -> list[StackRule]:
        eligible = [s for s in self.spec.stacks if s.requires is None or has_tests]
        if not eligible:
            raise SpecError(f"{self.source}: stacks: every stack requires tests, and the task has none")
        return eligible

    def sample(self, trial: Any, has_tests: bool) -> dict[str, Any]:
        """The trial's architecture spec (dict); raises optuna.TrialPruned for a redundant or over-budget stack."""
        import optuna

        stacks = {s.key: s for s in self.stacks(has_tests)}
        stack = stacks[trial.suggest_categorical("stack", list(stacks))]
        components = []
        for key, ctype in layer_keys(stack.layers):
            comp: dict[str, Any] = {"type": ctype}
            for fname, dist in self.dists.get(ctype, {}).items():
                value = dist.suggest(trial, f"{key}.{fname}")
                if value is not None:
                    comp[fname] = value
            components.append(comp)
        resolve = self.resolve.suggest(trial, "resolve")
        spec = self.build(components, resolve)
        problem = self.problem(spec)
        if problem:
            trial.set_user_attr("pruned_because", problem)
            raise optuna.TrialPruned(problem)
        return spec

    def build(self, components: list[dict[str, Any]], resolve: Any = "first") -> dict[str, Any]:
        body = {"models": copy.deepcopy(self.spec.models), "layers": [[c] for c in components],
                "seed": self.spec.seed, "resolve": resolve}
        return {"name": f"{self.name}-{spec_hash(body)[:8]}", **body}

    def problem(self, spec: dict[str, Any]) -> str | None:
        """Why a sampled spec is not worth running (invalid, redundant, or over a constraint); None when it is."""
        try:
            parse_spec(spec, "sampled spec")
        except SpecError as exc:
            return " ".join(str(exc).split())
        calls, tokens, redundant = estimate(spec, self.spec.constraints.prompt_tokens)
        limits = self.spec.constraints
        if redundant:
            return redundant
        if limits.max_calls is not None and calls > limits.max_calls:
            return f"needs {calls} calls per query, over constraints.max_calls={limits.max_calls}"
        if limits.max_tokens is not None and tokens > limits.max_tokens:
            return f"may use ~{tokens} tokens per query, over constraints.max_tokens={limits.max_tokens}"
        return None

    def grid(self, has_tests: bool) -> dict[str, list[Any]]:
        """Optuna GridSampler's search space: every parameter any eligible stack suggests, with all its values."""
        out: dict[str, list[Any]] = {"stack": [s.key for s in self.stacks(has_tests)]}
        for stack in self.stacks(has_tests):
            for key, ctype in layer_keys(stack.layers):
                for fname, dist in self.dists.get(ctype, {}).items():
                    if dist.choices is not None or dist.range is not None:
                        out[f"{key}.{fname}"] = dist.grid(f"{self.source}: components.{ctype}.{fname}")
        if self.resolve.choices is not None or self.resolve.range is not None:
            out["resolve"] = self.resolve.grid(f"{self.source}: resolve")
        return out

    def layer_options(self, ctype: str, key: str, width: int, rng: random.Random) -> list[dict[str, Any]]:
        """Up to `width` parameter settings of one layer (Optuna param names), for greedy construction."""
        names, values = [], []
        for fname, dist in self.dists.get(ctype, {}).items():
            if dist.choices is not None or dist.range is not None:
                names.append(f"{key}.{fname}")
                values.append(dist.grid(fname, greedy_points=3))
        combos = list(itertools.product(*values))
        if len(combos) > width:
            combos = rng.sample(combos, width)
        return [dict(zip(names, combo)) for combo in combos]


def layer_keys(layers: list[str]) -> list[tuple[str, str]]:
    """(parameter prefix, type) per layer: the type itself, then type#2, type#3 for repeats. Keys name a technique,
    not a position, so TPE shares what it learns about e.g. `generate.temperature` across stacks."""
    seen: dict[str, int] = {}
    out = []
    for ctype in layers:
        seen[ctype] = seen.get(ctype, 0) + 1
        out.append((ctype if seen[ctype] == 1 else f"{ctype}#{seen[ctype]}", ctype))
    return out


def spec_hash(body: dict[str, Any]) -> str:
    """A spec's identity without its name: identical architectures from different trials share one hash."""
    data = {k: v for k, v in body.items() if k != "name"}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def estimate(spec: dict[str, Any], prompt_tokens: int) -> tuple[int, int, str | None]:
    """Upper-bound-ish (calls, tokens) per query of a spec dict, and why it is redundant (a selector over one
    candidate), if it is. Candidate texts are assumed as long as the max_tokens of the layer that wrote them."""
    models = spec["models"]
    calls = tokens = candidates = 0
    length = 0
    for i, (comp,) in enumerate(spec["layers"]):
        alias = comp.get("model") or next(iter(models))
        mt = int(comp.get("max_tokens") or models.get(alias, {}).get("params", {}).get("max_tokens") or 256)
        ctype = comp["type"]
        shown = candidates * length
        if ctype in SELECTORS and candidates < 2:
            return calls, tokens, f"layers[{i}] ({ctype}) selects among {candidates} candidate(s): redundant"
        if ctype == "search":  # the technique's own bound, by algorithm; its answers are up to `width` paths
            search = SearchSpec.model_validate(comp)
            cost = search_cost(search, prompt_tokens)
            calls += cost.calls
            tokens += cost.tokens
            candidates, length = search.width, search.depth * search.step_max_tokens
        elif ctype in FIRST_LAYER_TYPES:
            n = comp.get("samples", 4 if ctype == "first_finish" else 1) * len(comp.get("models") or [alias])
            calls += len(comp.get("models") or [alias])
            tokens += prompt_tokens + n * mt
            candidates, length = (1 if ctype == "first_finish" else n), mt  # first_finish keeps one
        elif ctype == "vote":
            candidates = 1 if comp.get("keep", "winner") == "winner" else candidates
        elif ctype == "rank":
            method = comp.get("method", "listwise")
            n_calls = {"listwise": 1, "pairwise": candidates * (candidates - 1) // 2}.get(method, candidates)
            calls += n_calls
            tokens += n_calls * (prompt_tokens + (shown if method == "listwise" else 2 * length) + 64)
            candidates = min(candidates, comp.get("top_k") or candidates)
        elif ctype == "fuse":
            n = comp.get("samples", 1)
            calls += n
            tokens += n * (prompt_tokens + shown + mt)
            candidates, length = n, mt
        elif ctype in ("critique", "verify", "reward"):
            calls += candidates
            tokens += candidates * (prompt_tokens + length + mt)
            if ctype == "reward":
                candidates = min(candidates, comp.get("top_k") or candidates)
        elif ctype == "unit_test":
            calls += 1
            tokens += prompt_tokens + mt
    last = spec["layers"][-1][0]["type"]
    # (a search layer selects itself: its chosen answer comes first)
    if last in ("generate", "program") and candidates > 1 and spec.get("resolve", "first") == "first":
        return calls, tokens, (f"layers[{len(spec['layers']) - 1}] ({last}) samples {candidates} candidates but "
                               "nothing selects among them and resolve 'first' keeps one: redundant")
    return calls, tokens, None


def _probe_layers(component: dict[str, Any]) -> list[list[dict[str, Any]]]:
    if component["type"] in FIRST_LAYER_TYPES:
        return [[component]]
    return [[{"type": "generate", "samples": 2}], [component]]


def _reason(exc: Exception) -> str:
    return describe_error(exc.errors()[0]) if isinstance(exc, ValidationError) else str(exc)


def parse_space(data: Any, source: str = "<dict>") -> SearchSpace:
    """A validated space; any error is one line naming `source`, the field and the value."""
    try:
        spec = SpaceSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(f"{source}: invalid search space: " + "; ".join(map(describe_error, exc.errors()))) from None
    return SearchSpace(spec, source, data)


def load_space(path_or_name: str | Path | None = None) -> SearchSpace:
    """A space YAML file, or a built-in space by name (None: the default space, which covers every technique)."""
    name = str(path_or_name or DEFAULT_SPACE)
    path = Path(name)
    if not (path.suffix in (".yaml", ".yml", ".json") or path.exists()):
        builtin = resources.files("lamina.search") / "spaces" / f"{name}.yaml"
        if not builtin.is_file():
            raise SpecError(f"unknown search space {name!r}: not a file, and not a built-in space")
        path = Path(str(builtin))
    return parse_space(read_spec_file(path, "search space"), str(path))
