"""Usage: tokens, calls and seconds, rolled up per component, per query and per run."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(slots=True)
class Usage:
    """What model calls cost and what they spent, in tokens, calls and seconds.

    Cost, as if nothing was cached (what comparisons between architectures should use):
      prompt_tokens, completion_tokens, total_tokens; calls + cached_calls is the cost in calls.
    Spent now: spent_prompt_tokens, spent_completion_tokens, spent_tokens. A call replayed from the call cache
      costs what it cost when it was made and spends 0, so a replay reports the same cost as the run it replays.
    cached_prompt_tokens: of spent_prompt_tokens, those served from the engine's prefix cache (the engine's
      RequestOutput.num_cached_tokens; an OpenAI-compatible server's usage.prompt_tokens_details.cached_tokens).
    calls: requests made to a backend now (one request, however many samples; every request made counts, e.g. the
      single-sample requests made where a server ignores `n`); cached_calls: calls replayed (as many as they took).
    seconds: summed wall time of the calls (concurrent calls overlap). by_component: the same, per display name.
    first_finish calls cost every token generated before the winner finished, not only the winner's.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    spent_prompt_tokens: int = 0
    spent_completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    calls: int = 0
    cached_calls: int = 0
    seconds: float = 0.0
    by_component: dict[str, "Usage"] = field(default_factory=dict)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def spent_tokens(self) -> int:
        return self.spent_prompt_tokens + self.spent_completion_tokens

    def add_call(self, component: str, prompt_tokens: int, completion_tokens: int, seconds: float, cached: bool,
                 cached_prompt_tokens: int = 0, calls: int = 1) -> None:
        """One call that cost `prompt_tokens` + `completion_tokens`; `cached`: replayed from the call cache
        (spent nothing); `cached_prompt_tokens`: prompt tokens the engine's prefix cache served (live calls);
        `calls`: the requests it took (more than one where a server ignores or refuses `n`)."""
        spent = 0 if cached else 1
        call = Usage(prompt_tokens, completion_tokens, spent * prompt_tokens, spent * completion_tokens,
                     spent * cached_prompt_tokens, spent * calls, (1 - spent) * calls, seconds)
        self._merge(call)
        self.by_component.setdefault(component, Usage())._merge(call)

    def _merge(self, other: "Usage") -> None:
        for f in fields(self):
            if f.name != "by_component":
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def __add__(self, other: "Usage") -> "Usage":
        total = Usage()
        for part in (self, other):
            total._merge(part)
            for name, sub in part.by_component.items():
                total.by_component.setdefault(name, Usage())._merge(sub)
        return total

    def to_dict(self) -> dict[str, Any]:
        """Every field above plus total_tokens and spent_tokens; seconds rounded to 0.1 ms."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "spent_prompt_tokens": self.spent_prompt_tokens,
            "spent_completion_tokens": self.spent_completion_tokens,
            "spent_tokens": self.spent_tokens,
            "cached_prompt_tokens": self.cached_prompt_tokens,
            "calls": self.calls,
            "cached_calls": self.cached_calls,
            "seconds": round(self.seconds, 4),
            "by_component": {name: sub.to_dict() for name, sub in self.by_component.items()},
        }

    def summary(self) -> str:
        return (f"calls={self.calls} cached={self.cached_calls} prompt_tokens={self.prompt_tokens} "
                f"completion_tokens={self.completion_tokens} spent_tokens={self.spent_tokens} "
                f"seconds={self.seconds:.2f}")
