"""Budget guard: checked before every layer (estimate) and every call (reservation), never overspent.

The budget is on COST: a call replayed from the call cache counts its recorded calls and tokens as if it were
made now, so a replay stops at the same point as the run it replays (and a cached layer is no cheaper)."""
from __future__ import annotations

from dataclasses import dataclass

from lamina.errors import BudgetExceededError


@dataclass(slots=True)
class Estimate:
    calls: int = 0
    tokens: int = 0

    def __add__(self, other: "Estimate") -> "Estimate":
        return Estimate(self.calls + other.calls, self.tokens + other.tokens)


@dataclass(slots=True)
class BudgetGuard:
    max_calls: int | None = None
    max_tokens: int | None = None
    used_calls: int = 0
    used_tokens: int = 0
    reserved_calls: int = 0
    reserved_tokens: int = 0

    def check(self, need: Estimate, what: str) -> None:
        calls = self.used_calls + self.reserved_calls + need.calls
        tokens = self.used_tokens + self.reserved_tokens + need.tokens
        if self.max_calls is not None and calls > self.max_calls:
            raise BudgetExceededError(f"budget.max_calls={self.max_calls}: {what} needs {need.calls} more call(s) "
                                      f"after {self.used_calls + self.reserved_calls}")
        if self.max_tokens is not None and tokens > self.max_tokens:
            raise BudgetExceededError(f"budget.max_tokens={self.max_tokens}: {what} may use up to {need.tokens} more "
                                      f"token(s) after {self.used_tokens + self.reserved_tokens}")

    def reserve(self, need: Estimate, what: str) -> None:
        self.check(need, what)
        self.reserved_calls += need.calls
        self.reserved_tokens += need.tokens

    def settle(self, reserved: Estimate, calls: int, tokens: int) -> None:
        self.reserved_calls -= reserved.calls
        self.reserved_tokens -= reserved.tokens
        self.used_calls += calls
        self.used_tokens += tokens
