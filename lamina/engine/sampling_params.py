"""SamplingParams: what to sample and when to stop, validated on construction.

This dataclass is the one definition of the sampling fields: each field's type (its annotation), default, allowed
values and help text (its `FieldInfo`, in the field's metadata). The spec's model defaults, the server's request
bodies, the CLI flags and the OpenAI backend's request body derive theirs from `SAMPLING_FIELDS`; `pydantic_fields`
builds pydantic field definitions from it.
"""
from __future__ import annotations

import typing
from collections.abc import Callable, Iterable
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from lamina.engine.structured_outputs import StructuredOutputsParams
from lamina.errors import InvalidRequestError, LaminaError


@dataclass(frozen=True, slots=True)
class FieldInfo:
    """One sampling field: `kind` is its type (`int | None`, `list[str]`...), `check(value)` says whether a value of
    that type is allowed, `expected` says which values are, in words (used in every error)."""

    name: str
    kind: Any
    default: Any
    expected: str
    help: str
    check: Callable[[Any], bool]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _structured(value: Any) -> bool:
    try:
        return StructuredOutputsParams.coerce(value) is not None
    except LaminaError:
        return False


def _sampling(default: Any, expected: str, help: str, check: Callable[[Any], bool]) -> Any:
    info = {"expected": expected, "help": help, "check": check}
    if isinstance(default, list):
        return field(default_factory=list, metadata={"sampling": info})
    return field(default=default, metadata={"sampling": info})


@dataclass(slots=True, init=False)
class SamplingParams:
    """vLLM's names and meanings. Raises InvalidRequestError `SamplingParams.<field>=<value>: expected ...`."""

    n: int = _sampling(1, "an integer >= 1", "samples per prompt",
                       lambda v: isinstance(v, int) and v >= 1)
    temperature: float = _sampling(1.0, "a number >= 0", "sampling temperature; 0 is greedy",
                                   lambda v: _number(v) and v >= 0)
    top_p: float = _sampling(1.0, "a number in (0, 1]", "nucleus sampling: keep the smallest set of tokens whose "
                             "probability sums to top_p", lambda v: _number(v) and 0 < v <= 1)
    top_k: int = _sampling(-1, "-1 (off) or an integer >= 1", "keep the top_k most likely tokens (-1: all)",
                           lambda v: isinstance(v, int) and (v >= 1 or v == -1))
    min_p: float = _sampling(0.0, "a number in [0, 1]", "drop tokens less likely than min_p times the most likely one",
                             lambda v: _number(v) and 0 <= v <= 1)
    repetition_penalty: float = _sampling(1.0, "a number > 0", "divide the logits of tokens already in the prompt or "
                                          "output by this (> 1 discourages repeats)", lambda v: _number(v) and v > 0)
    seed: int | None = _sampling(None, "an integer or None", "random seed (reproducible samples)",
                                 lambda v: v is None or isinstance(v, int))
    max_tokens: int = _sampling(16, "an integer >= 1", "most tokens to generate per sample (SamplingParams also "
                                "takes 0 with prompt_logprobs: score the prompt only)",
                                lambda v: isinstance(v, int) and v >= 1)
    stop: list[str] = _sampling([], "a list of non-empty strings", "stop when this string is generated",
                                lambda v: all(isinstance(s, str) and s for s in v))
    stop_token_ids: list[int] = _sampling([], "a list of integers", "stop at this token id",
                                          lambda v: all(isinstance(t, int) for t in v))
    ignore_eos: bool = _sampling(False, "true or false", "keep generating after the end-of-sequence token",
                                 lambda v: isinstance(v, bool))
    logprobs: int | None = _sampling(None, "None or an integer in [0, 20]", "return each sampled token's logprob and "
                                     "the top N alternatives'", lambda v: v is None or (isinstance(v, int) and 0 <= v <= 20))
    prompt_logprobs: int | None = _sampling(None, "None or an integer in [0, 20]", "return each prompt token's logprob "
                                            "(the first has none) and the top N alternatives'",
                                            lambda v: v is None or (isinstance(v, int) and 0 <= v <= 20))
    include_stop_str_in_output: bool = _sampling(False, "true or false", "keep the matched stop string in the output",
                                                 lambda v: isinstance(v, bool))
    structured_outputs: dict[str, Any] | None = _sampling(
        None, "None or an object with one of json (a JSON schema), regex, choice (a list of strings), json_object: true",
        "constrain the output to a grammar (vLLM's StructuredOutputsParams)",
        lambda v: v is None or _structured(v))
    num_speculative_tokens: int = _sampling(
        0, "an integer in [0, 16]", "speculative decoding by prompt lookup: draft up to this many tokens per step from "
        "an earlier occurrence of the last n-gram in the prompt or output, verified in one forward (0: off); greedy "
        "output is unchanged, sampled output keeps its distribution", lambda v: isinstance(v, int) and 0 <= v <= 16)
    prompt_lookup_max: int = _sampling(4, "an integer in [1, 16]", "speculative decoding: the longest n-gram looked up",
                                       lambda v: isinstance(v, int) and 1 <= v <= 16)
    prompt_lookup_min: int = _sampling(2, "an integer in [1, 16], at most prompt_lookup_max",
                                       "speculative decoding: the shortest n-gram looked up",
                                       lambda v: isinstance(v, int) and 1 <= v <= 16)

    def __init__(self, **kwargs: Any) -> None:
        unknown = sorted(set(kwargs) - set(SAMPLING_FIELDS))
        if unknown:
            raise InvalidRequestError(f"SamplingParams: unknown field(s) {', '.join(unknown)}; "
                                      f"known: {', '.join(SAMPLING_FIELDS)}")
        for name, info in SAMPLING_FIELDS.items():
            setattr(self, name, kwargs[name] if name in kwargs else info.default)
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        if isinstance(self.structured_outputs, StructuredOutputsParams):
            self.structured_outputs = self.structured_outputs.to_dict()
        self._validate()

    def _validate(self) -> None:
        if isinstance(self.structured_outputs, dict):
            StructuredOutputsParams.coerce(self.structured_outputs)  # its own error names the sub-field
        for name, info in SAMPLING_FIELDS.items():
            if name == "max_tokens" and self.max_tokens == 0 and self.prompt_logprobs is not None:
                continue  # score the prompt, generate nothing (vLLM's echo with max_tokens 0)
            if not info.check(getattr(self, name)):
                raise InvalidRequestError(f"SamplingParams.{name}={getattr(self, name)!r}: expected {info.expected}")
        if self.prompt_lookup_min > self.prompt_lookup_max:
            raise InvalidRequestError(f"SamplingParams.prompt_lookup_min={self.prompt_lookup_min!r}: expected "
                                      f"{SAMPLING_FIELDS['prompt_lookup_min'].expected} ({self.prompt_lookup_max})")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def replace(self, **changes: Any) -> "SamplingParams":
        return SamplingParams(**{**self.to_dict(), **changes})

    def changed(self) -> dict[str, Any]:
        """The fields whose values differ from the defaults, in field order."""
        return {name: getattr(self, name) for name, info in SAMPLING_FIELDS.items()
                if getattr(self, name) != info.default}


def _field_infos() -> dict[str, FieldInfo]:
    hints = typing.get_type_hints(SamplingParams)
    infos = {}
    for f in fields(SamplingParams):
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        infos[f.name] = FieldInfo(f.name, hints[f.name], default, **f.metadata["sampling"])
    return infos


SAMPLING_FIELDS: dict[str, FieldInfo] = _field_infos()  # name -> FieldInfo, in declaration order


def pydantic_type(name: str, *, optional: bool = True) -> Any:
    """Field `name`'s type for pydantic (`| None` if optional), checked for its allowed values: an error
    `expected <FieldInfo.expected>` (type `sampling_value`) otherwise."""
    from pydantic import AfterValidator
    from pydantic_core import PydanticCustomError

    info = SAMPLING_FIELDS[name]

    def check(value: Any) -> Any:
        if value is not None and not info.check(value):
            raise PydanticCustomError("sampling_value", "expected {expected}", {"expected": info.expected})
        return value

    return typing.Annotated[info.kind | None if optional else info.kind, AfterValidator(check)]


def pydantic_fields(names: Iterable[str] | None = None, *, exclude: Iterable[str] = (),
                    with_defaults: Iterable[str] = ()) -> dict[str, tuple[Any, Any]]:
    """Pydantic field definitions for `pydantic.create_model(..., **defs)`: the chosen SamplingParams fields (all,
    less `exclude`), each with its `pydantic_type` and its help text as description. Optional (default None: "not
    set") unless named in `with_defaults`, which keep SamplingParams' default."""
    from pydantic import Field

    chosen = list(SAMPLING_FIELDS) if names is None else list(names)
    unknown = sorted(set(chosen) - set(SAMPLING_FIELDS))
    if unknown:
        raise ValueError(f"not SamplingParams fields: {', '.join(unknown)}")
    keep_default, skip = set(with_defaults), set(exclude)
    defs: dict[str, tuple[Any, Any]] = {}
    for name in (n for n in chosen if n not in skip):
        info = SAMPLING_FIELDS[name]
        if name not in keep_default:
            spec = Field(None, description=info.help)
        elif isinstance(info.default, list):
            spec = Field(default_factory=list, description=info.help)
        else:
            spec = Field(info.default, description=info.help)
        defs[name] = (pydantic_type(name, optional=name not in keep_default), spec)
    return defs
