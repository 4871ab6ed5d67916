"""Architecture specs: YAML/JSON validated by pydantic; errors name the file, the path and what was expected."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from lamina.engine.sampling_params import pydantic_fields
from lamina.errors import SpecError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _SetValues(_Strict):
    def values(self) -> dict[str, Any]:
        """The fields that are set (not None)."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


# A model alias's sampling defaults: every SamplingParams field but the per-call ones (`samples` sets n; a component
# asks for logprobs), optional, with SamplingParams' allowed values.
SamplingDefaults = create_model("SamplingDefaults", __base__=_SetValues,
                                **pydantic_fields(exclude=("n", "logprobs")))  # type: ignore[call-overload]


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


class _Component(_Strict):
    name: str | None = None
    model: str | None = None  # an alias from `models`; None: the first alias
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)

    def overrides(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("temperature", "top_p", "max_tokens") if getattr(self, k) is not None}

    def aliases(self) -> list[str | None]:
        return [self.model]


class GenerateSpec(_Component):
    type: Literal["generate"]
    models: list[str] | None = Field(None, min_length=1)
    samples: int = Field(1, ge=1, le=256)
    system: str | None = None
    logprobs: int | None = Field(None, ge=0, le=20)

    def aliases(self) -> list[str | None]:
        return list(self.models) if self.models else [self.model]


class RankSpec(_Component):
    type: Literal["rank"]
    method: Literal["listwise", "pairwise", "reward"] = "listwise"
    top_k: int | None = Field(None, ge=1)
    use_critiques: bool = False
    reward_mode: Literal["judge", "logprob"] = "judge"


class FuseSpec(_Component):
    type: Literal["fuse"]
    samples: int = Field(1, ge=1, le=64)
    top_k: int | None = Field(None, ge=1)  # how many candidates to show the fuser
    use_critiques: bool = True


class CritiqueSpec(_Component):
    type: Literal["critique"]


class VerifySpec(_Component):
    type: Literal["verify"]
    fallback: Literal["keep_all", "keep_first", "none"] = "keep_all"


class UnitTestSpec(_Component):
    type: Literal["unit_test"]
    source: Literal["auto", "given", "generate"] = "auto"  # auto: the task's tests if it has them, else generate
    num_tests: int = Field(3, ge=1, le=20)
    mode: Literal["auto", "execute", "judge"] = "auto"  # auto: execute when the tests are code (assert ...)
    keep: Literal["sort", "best", "passing"] = "sort"
    timeout_s: float = Field(5.0, gt=0)
    memory_mb: int = Field(512, ge=32)


class VoteSpec(_Component):
    type: Literal["vote"]
    method: Literal["majority", "best_of_majority", "inverse_entropy"] = "majority"
    extract: Literal["auto", "number", "boxed", "choice", "code", "text"] = "auto"
    keep: Literal["winner", "all"] = "winner"


class RewardSpec(_Component):
    type: Literal["reward"]
    mode: Literal["judge", "logprob"] = "judge"
    top_k: int | None = Field(None, ge=1)


class FirstFinishSpec(_Component):
    type: Literal["first_finish"]
    samples: int = Field(4, ge=1, le=256)
    system: str | None = None


ComponentSpec = Annotated[
    Union[GenerateSpec, RankSpec, FuseSpec, CritiqueSpec, VerifySpec, UnitTestSpec, VoteSpec, RewardSpec,
          FirstFinishSpec],
    Field(discriminator="type"),
]
COMPONENT_TYPES = ("generate", "rank", "fuse", "critique", "verify", "unit_test", "vote", "reward", "first_finish")


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


def read_spec_file(path: str | Path, what: str = "architecture spec") -> Any:
    """A YAML (or, by suffix, JSON) file's data; errors name the file and, for syntax errors, line and column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise SpecError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise SpecError(f"{path}: invalid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None


def load_spec(path: str | Path) -> ArchSpec:
    return parse_spec(read_spec_file(path), str(path))
