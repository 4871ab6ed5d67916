"""The pydantic base of every component spec: the fields all techniques share (display name, model alias,
sampling overrides). Each technique's file declares its own spec class on it; lamina.spec builds the union."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class StrictModel(BaseModel):
    """A spec model that rejects unknown keys."""

    model_config = ConfigDict(extra="forbid")


class Component(StrictModel):
    name: str | None = None  # display only (trace, usage.by_component); never part of a seed or cache key
    model: str | None = None  # an alias from `models`; None: the first alias
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)

    def overrides(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("temperature", "top_p", "max_tokens") if getattr(self, k) is not None}

    def aliases(self) -> list[str | None]:
        return [self.model]
