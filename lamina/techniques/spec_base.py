"""The pydantic base of every component spec: the fields all techniques share (display name, model alias,
sampling overrides). Each technique's file declares its own spec class on it; lamina.spec builds the union."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, create_model

from lamina.engine.sampling_params import pydantic_fields

# The SamplingParams fields a component may override (with SamplingParams' allowed values). Not top_k: rank, fuse
# and reward use `top_k` for how many candidates to keep. structured_outputs: a judge or generator may ask for a JSON
# schema, regex or choice (e.g. {choice: ["yes", "no"]}) so that its reply parses.
COMPONENT_SAMPLING = ("temperature", "top_p", "max_tokens", "structured_outputs")


class StrictModel(BaseModel):
    """A spec model that rejects unknown keys."""

    model_config = ConfigDict(extra="forbid")


_ComponentSampling = create_model("_ComponentSampling", __base__=StrictModel,
                                  **pydantic_fields(COMPONENT_SAMPLING))  # type: ignore[call-overload]


class Component(_ComponentSampling):  # type: ignore[misc, valid-type]
    name: str | None = None  # display only (trace, usage.by_component); never part of a seed or cache key
    model: str | None = None  # an alias from `models`; None: the first alias

    def overrides(self) -> dict[str, Any]:
        """The sampling fields this component sets (not None), which win over every default."""
        return {k: getattr(self, k) for k in COMPONENT_SAMPLING if getattr(self, k) is not None}

    def aliases(self) -> list[str | None]:
        return [self.model]
