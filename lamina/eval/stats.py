"""Run statistics: accuracy with a Wilson 95% interval, cost per example, per-component usage, unbiased pass@k."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from lamina.eval.store import ResultRow

Z95 = 1.959963984540054


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    if n == 0:
        return 0.0, 0.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Chen et al. (2021): 1 - C(n-c, k) / C(n, k), computed as a stable product."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


@dataclass(slots=True)
class RunSummary:
    """Per-example means over a run. Calls and tokens are the cost as if nothing was cached (a replayed run costs
    what its run cost); `spent_tokens` is what was spent now (0 for calls replayed from the call cache)."""

    name: str
    examples: int
    accuracy: float
    ci_low: float
    ci_high: float
    errors: int
    calls: float
    prompt_tokens: float
    completion_tokens: float
    seconds: float
    by_component: dict[str, dict[str, float]] = field(default_factory=dict)
    pass_at: dict[int, float] = field(default_factory=dict)
    samples: int = 0
    pass_at_examples: int = 0  # examples pass@k is computed over (those with samples; errored ones have none)
    spent_tokens: float = 0.0

    @property
    def tokens(self) -> float:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "examples": self.examples, "accuracy": self.accuracy, "ci95": [self.ci_low, self.ci_high],
                "errors": self.errors, "calls_per_example": self.calls, "prompt_tokens_per_example": self.prompt_tokens,
                "completion_tokens_per_example": self.completion_tokens, "tokens_per_example": self.tokens,
                "spent_tokens_per_example": self.spent_tokens,
                "seconds_per_example": self.seconds, "by_component": self.by_component,
                "pass_at_k": {str(k): v for k, v in self.pass_at.items()}, "samples_per_example": self.samples,
                "pass_at_k_examples": self.pass_at_examples}


def summarize(name: str, rows: list[ResultRow]) -> RunSummary:
    n = len(rows)
    correct = sum(r.score for r in rows)
    low, high = wilson_interval(correct, n)
    mean = (lambda key: sum(r.usage.get(key, 0) for r in rows) / n) if n else (lambda key: 0.0)
    # a store written before usage split cost from spent has no spent_tokens: it spent what it cost
    spent = sum(r.usage.get("spent_tokens", r.usage.get("prompt_tokens", 0) + r.usage.get("completion_tokens", 0))
                for r in rows) / n if n else 0.0
    return RunSummary(name, n, correct / n if n else 0.0, low, high, sum(r.error is not None for r in rows),
                      mean("calls") + mean("cached_calls"), mean("prompt_tokens"), mean("completion_tokens"),
                      sum(r.seconds for r in rows) / n if n else 0.0, _components(rows), *_pass_at(rows),
                      spent_tokens=spent)


def _components(rows: list[ResultRow]) -> dict[str, dict[str, float]]:
    totals: dict[str, dict[str, float]] = {}
    for row in rows:
        for name, usage in row.usage.get("by_component", {}).items():
            acc = totals.setdefault(name, {"calls": 0.0, "prompt_tokens": 0.0, "completion_tokens": 0.0, "seconds": 0.0})
            for key in acc:
                acc[key] += usage.get(key, 0)
    n = max(1, len(rows))
    return {name: {k: v / n for k, v in acc.items()} for name, acc in totals.items()}


def _pass_at(rows: list[ResultRow]) -> tuple[dict[int, float], int, int]:
    """pass@k over the first layer's samples, for k = 1, 2, 4, ... up to the fewest samples any sampled example has.

    Computed over the examples that have samples: one that errored (e.g. a budget error) has none and is left out,
    rather than hiding pass@k for the whole run; the third value says how many examples were used."""
    sampled = [r.sample_scores for r in rows if len(r.sample_scores) > 1]
    if not sampled:
        return {}, 0, 0
    n_min = min(len(s) for s in sampled)
    ks = sorted({k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256) if k <= n_min} | {n_min})
    return {k: sum(pass_at_k(len(s), int(sum(x >= 1.0 for x in s)), k) for s in sampled) / len(sampled)
            for k in ks}, n_min, len(sampled)
