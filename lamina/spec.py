"""Architecture specs: YAML/JSON validated by pydantic; errors name the file, the path and what was expected."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Field, ValidationError, create_model, field_validator

from lamina.config_file import read_spec_file
from lamina.engine.sampling_params import pydantic_fields
from lamina.errors import SpecError
from lamina.techniques import TECHNIQUES
from lamina.techniques.spec_base import Component as _Component  # noqa: F401  (importable from here too)
from lamina.techniques.spec_base import StrictModel as _Strict


class _SetValues(_Strict):
    def values(self) -> dict[str, Any]:
        """The fields that are set (not None)."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


# A model alias's sampling defaults: every SamplingParams field but the per-call ones (`samples` sets n; a component
# asks for logprobs), optional, with SamplingParams' allowed values.
SamplingDefaults = create_model("SamplingDefaults", __base__=_SetValues,
                                **pydantic_fields(exclude=("n", "logprobs", "prompt_logprobs")))  # type: ignore[call-overload]


class ModelAlias(_Strict):
    backend: Literal["local", "openai"] = "local"
    model: str = "default"
    base_url: str | None = None
    api_key_env: str | None = None
    max_concurrency: int | None = Field(None, ge=1)
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(4, ge=0)
    supports_n: bool | None = None
    engine: dict[str, Any] = Field(default_factory=dict)
    params: SamplingDefaults = Field(default_factory=SamplingDefaults)  # type: ignore[valid-type]

    def backend_options(self) -> dict[str, Any]:
        if self.backend == "local":
            opts: dict[str, Any] = {"engine": self.engine}
        else:
            opts = {"base_url": self.base_url or "http://127.0.0.1:8000/v1", "api_key_env": self.api_key_env,
                    "timeout_s": self.timeout_s, "max_retries": self.max_retries, "supports_n": self.supports_n}
        if self.max_concurrency:
            opts["max_concurrency"] = self.max_concurrency
        return opts


ComponentSpec = Annotated[Union[tuple(cls.spec_class for cls in TECHNIQUES.values())], Field(discriminator="type")]
COMPONENT_TYPES = tuple(TECHNIQUES)


class BudgetSpec(_Strict):
    max_calls: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)  # prompt + completion tokens per query
    on_exceed: Literal["error", "stop"] = "error"  # stop: skip the remaining layers, answer from what exists


class ArchSpec(_Strict):
    name: str = Field(min_length=1)
    description: str = ""
    models: dict[str, ModelAlias] = Field(default_factory=lambda: {"default": ModelAlias()})
    layers: list[list[ComponentSpec]] = Field(min_length=1)
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    seed: int = 0
    resolve: Literal["first", "highest_score", "shortest", "longest", "random"] = "first"
    cache: str | None = None

    @field_validator("layers", mode="before")
    @classmethod
    def _wrap_single(cls, layers: Any) -> Any:
        if isinstance(layers, list):
            return [[layer] if isinstance(layer, dict) else layer for layer in layers]
        return layers

    @field_validator("models")
    @classmethod
    def _some_model(cls, models: dict[str, ModelAlias]) -> dict[str, ModelAlias]:
        if not models:
            raise ValueError("needs at least one model alias")
        return models


def __getattr__(name: str) -> Any:
    """The component spec classes (GenerateSpec, ...) live in their technique's file; importable from here too."""
    for cls in TECHNIQUES.values():
        if cls.spec_class.__name__ == name:
            return cls.spec_class
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in COMPONENT_TYPES and i >= 2 and isinstance(loc[i - 1], int) and loc[0] == "layers":
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "<root>"


def _describe(error: dict[str, Any]) -> str:
    value = error.get("input")
    shown = "" if error["type"] == "missing" or isinstance(value, (dict, list)) else f" (got {value!r})"
    return f"{_format_loc(tuple(error['loc']))}: {error['msg']}{shown}"


def parse_spec(data: Any, source: str = "<dict>") -> ArchSpec:
    if not isinstance(data, dict):
        raise SpecError(f"{source}: an architecture spec must be a mapping, got {type(data).__name__}")
    try:
        spec = ArchSpec.model_validate(data)
    except ValidationError as exc:
        lines = [_describe(e) for e in exc.errors()]
        raise SpecError(f"{source}: invalid architecture spec:\n  " + "\n  ".join(lines)) from None
    _check_aliases(spec, source)
    return spec


def _check_aliases(spec: ArchSpec, source: str) -> None:
    known = list(spec.models)
    for i, layer in enumerate(spec.layers):
        if not layer:
            raise SpecError(f"{source}: layers[{i}]: a layer needs at least one component")
        for j, comp in enumerate(layer):
            field = "models" if getattr(comp, "models", None) else "model"
            for alias in comp.aliases():
                if alias is not None and alias not in spec.models:
                    raise SpecError(f"{source}: layers[{i}][{j}].{field}: unknown model alias {alias!r}; "
                                    f"expected one of {known}")


def load_spec(path: str | Path) -> ArchSpec:
    return parse_spec(read_spec_file(path), str(path))
