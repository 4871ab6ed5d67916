"""Bounded admission: at most `capacity` generation requests in flight; the rest get 429 at once, never a hidden queue."""
from __future__ import annotations

from lamina.server.errors import APIError


class Slot:
    __slots__ = ("_admission", "_held")

    def __init__(self, admission: "Admission") -> None:
        self._admission, self._held = admission, True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._admission.depth -= 1


class Admission:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"max_queue={capacity}: expected an integer >= 1")
        self.capacity = capacity
        self.depth = 0

    def acquire(self) -> Slot:
        if self.depth >= self.capacity:
            raise APIError(429, f"server queue is full ({self.depth} of {self.capacity} requests in flight); retry later",
                           code="queue_full", headers={"Retry-After": "1"})
        self.depth += 1
        return Slot(self)
