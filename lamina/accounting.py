"""Usage: tokens, calls and seconds, rolled up per component, per query and per run."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0  # model calls actually made (one request, however many samples)
    cached_calls: int = 0  # calls answered from the call cache
    seconds: float = 0.0
    by_component: dict[str, "Usage"] = field(default_factory=dict)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add_call(self, component: str, prompt_tokens: int, completion_tokens: int, seconds: float,
                 cached: bool) -> None:
        call = Usage(0 if cached else prompt_tokens, 0 if cached else completion_tokens,
                     0 if cached else 1, 1 if cached else 0, seconds)
        self._merge(call)
        self.by_component.setdefault(component, Usage())._merge(call)

    def _merge(self, other: "Usage") -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.calls += other.calls
        self.cached_calls += other.cached_calls
        self.seconds += other.seconds

    def __add__(self, other: "Usage") -> "Usage":
        total = Usage()
        for part in (self, other):
            total._merge(part)
            for name, sub in part.by_component.items():
                total.by_component.setdefault(name, Usage())._merge(sub)
        return total

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "calls": self.calls,
            "cached_calls": self.cached_calls,
            "seconds": round(self.seconds, 4),
            "by_component": {name: sub.to_dict() for name, sub in self.by_component.items()},
        }

    def summary(self) -> str:
        return (f"calls={self.calls} cached={self.cached_calls} prompt_tokens={self.prompt_tokens} "
                f"completion_tokens={self.completion_tokens} seconds={self.seconds:.2f}")
