"""OpenAI request bodies (chat and text completions) and their translation to SamplingParams."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from lamina.engine.sampling_params import SAMPLING_FIELDS, SamplingParams, pydantic_fields, pydantic_type
from lamina.engine.structured_outputs import StructuredOutputsParams
from lamina.errors import InvalidRequestError
from lamina.server.errors import APIError, bad_request

MAX_N = 64
# Fields OpenAI defines that Lamina does not implement: reject rather than silently ignore.
_UNSUPPORTED = ("tools", "functions", "tool_choice", "function_call", "logit_bias", "suffix", "audio", "prediction")


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self, index: int) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        parts = []
        for i, part in enumerate(self.content):
            if part.type != "text" or part.text is None:
                raise bad_request(f"messages[{index}].content[{i}]: only text parts are supported, got type {part.type!r}",
                                  f"messages.{index}.content.{i}.type")
            parts.append(part.text)
        return "".join(parts)


class StreamOptions(BaseModel):
    include_usage: bool = False


class LaminaOptions(BaseModel):
    """Lamina's extension, sent by the openai SDK as `extra_body={"lamina": {...}}`."""

    model_config = ConfigDict(extra="forbid")
    trace: bool = False  # architectures: return each run's trace in the response's `lamina.trace`
    tests: list[str] | None = None  # architectures: unit tests handed to `Architecture.run(..., tests=)`


# Sampling fields from SamplingParams, with its allowed values; OpenAI's shapes of stop (str or list) and logprobs
# (per endpoint) are declared below. vLLM's extra fields (top_k, min_p, repetition_penalty, stop_token_ids,
# ignore_eos, include_stop_str_in_output) are accepted as top-level keys, as vLLM does.
_OPENAI_SHAPED = ("stop", "logprobs")
# Structured outputs: OpenAI's response_format, vLLM's structured_outputs and its older guided_* fields.
_GUIDED = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice"}
_SAMPLING_FIELDS = frozenset(set(SAMPLING_FIELDS) - {"n", "seed", "logprobs", "prompt_logprobs"}
                             | {"max_completion_tokens", "presence_penalty", "frequency_penalty", "response_format",
                                *_GUIDED})


class _Extensible(BaseModel):
    model_config = ConfigDict(extra="allow")


_LogprobsCount = pydantic_type("logprobs")  # SamplingParams.logprobs: chat's top_logprobs, completions' logprobs
_MaxTokens = pydantic_type("max_tokens")  # also chat's max_completion_tokens
_SamplingFields = create_model("_SamplingFields", __base__=_Extensible, **pydantic_fields(
    exclude=(*_OPENAI_SHAPED, "prompt_logprobs"), with_defaults=("n",)))  # prompt logprobs: completions' echo  # type: ignore[call-overload]


class _Sampling(_SamplingFields):  # type: ignore[valid-type, misc]
    model: str
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    user: str | None = None
    response_format: dict[str, Any] | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    lamina: LaminaOptions = Field(default_factory=LaminaOptions)

    @field_validator("n")
    @classmethod
    def _n(cls, value: int) -> int:
        if value > MAX_N:
            raise ValueError(f"expected at most {MAX_N} samples per request")
        return value

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > 16 or not all(stops):
            raise ValueError("expected up to 16 non-empty strings")
        return stops

    def sampling_fields_set(self) -> list[str]:
        """Sampling fields the client set; an architecture's spec decides its own sampling and reports these back."""
        return sorted(self.model_fields_set & _SAMPLING_FIELDS)

    def check_supported(self) -> None:
        extra = self.model_extra or {}
        for name in _UNSUPPORTED:
            if extra.get(name) not in (None, [], {}):
                raise bad_request(f"{name!r} is not supported by this server", name, "unsupported_parameter")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) not in (None, 0, 0.0):
                raise bad_request(f"{name}={getattr(self, name)!r}: only 0 is supported (use repetition_penalty)", name,
                                  "unsupported_parameter")

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def requested_logprobs(self) -> int | None:
        return None

    def requested_prompt_logprobs(self) -> int | None:
        return None

    def sampling_params(self, default_max_tokens: int) -> SamplingParams:
        fields: dict[str, Any] = {name: getattr(self, name) for name in _SamplingFields.model_fields
                                  if getattr(self, name) is not None}
        max_tokens = self.requested_max_tokens()
        fields.update(max_tokens=default_max_tokens if max_tokens is None else max_tokens, stop=self.stop,
                      logprobs=self.requested_logprobs(), prompt_logprobs=self.requested_prompt_logprobs())
        structured = self.structured_outputs_requested()
        if structured is not None:
            fields["structured_outputs"] = structured
        try:
            return SamplingParams(**fields)
        except InvalidRequestError as exc:
            field = str(exc).split("=", 1)[0].removeprefix("SamplingParams.")
            raise APIError(400, str(exc), param=field if field in fields else None) from None


    def structured_outputs_requested(self) -> dict[str, Any] | None:
        """The one output constraint the body asks for (response_format, structured_outputs or a guided_* field),
        checked here so that a bad one is a 400 naming its field; None when the output is free text."""
        given: list[tuple[str, dict[str, Any]]] = []
        if self.response_format is not None:
            constraint = _response_format(self.response_format)
            if constraint is not None:
                given.append(("response_format", constraint))
        if self.structured_outputs is not None:
            given.append(("structured_outputs", self.structured_outputs))
        given += [(name, {kind: getattr(self, name)}) for name, kind in _GUIDED.items() if getattr(self, name) is not None]
        if len(given) > 1:
            raise bad_request(f"{' and '.join(n for n, _ in given)}: set only one output constraint", given[1][0])
        if not given:
            return None
        name, constraint = given[0]
        try:
            StructuredOutputsParams.coerce(constraint).grammar()  # type: ignore[union-attr]
        except InvalidRequestError as exc:
            raise bad_request(f"{name}: {exc}", name) from None
        return constraint


def _response_format(value: dict[str, Any]) -> dict[str, Any] | None:
    """OpenAI's response_format as a StructuredOutputsParams dict: text (None), json_object, json_schema."""
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"json_object": True}
    if kind == "json_schema":
        schema = (value.get("json_schema") or {}).get("schema") if isinstance(value.get("json_schema"), dict) else None
        if not isinstance(schema, dict):
            raise bad_request("response_format.json_schema.schema: expected a JSON schema (an object)",
                              "response_format.json_schema.schema")
        return {"json": schema}
    raise bad_request(f"response_format.type={kind!r}: expected text, json_object or json_schema", "response_format.type")


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: _MaxTokens = None
    logprobs: bool = False
    top_logprobs: _LogprobsCount = None
    add_generation_prompt: bool = True  # vLLM's: false leaves the prompt after the last message
    continue_final_message: bool = False  # vLLM's: the final (assistant) message is continued, not closed

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def check_supported(self) -> None:
        super().check_supported()
        if (self.model_extra or {}).get("echo"):
            raise bad_request("echo=true is not supported on chat completions (use /v1/completions)", "echo",
                              "unsupported_parameter")
        if self.continue_final_message and "add_generation_prompt" not in self.model_fields_set:
            self.add_generation_prompt = False  # vLLM's clients send continue_final_message alone
        if self.continue_final_message and self.add_generation_prompt:
            raise bad_request("continue_final_message=true needs add_generation_prompt=false", "continue_final_message")

    def requested_logprobs(self) -> int | None:
        if self.top_logprobs is not None and not self.logprobs:
            raise bad_request("top_logprobs requires logprobs=true", "top_logprobs")
        return (self.top_logprobs or 0) if self.logprobs else None

    def sampling_fields_set(self) -> list[str]:
        """Also the prompt-shaping fields, which an architecture (its own prompts) does not apply either."""
        prompt_fields = {"add_generation_prompt", "continue_final_message"} & self.model_fields_set
        return sorted({*super().sampling_fields_set(), *prompt_fields})

    def message_dicts(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.text(i)} for i, m in enumerate(self.messages)]


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(None, ge=0, description="most tokens to generate per sample; 0 with echo: score "
                                   "the prompt only")
    logprobs: _LogprobsCount = None
    echo: bool = False
    best_of: int | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.max_tokens == 0 and not self.echo:
            raise bad_request("max_tokens=0 needs echo=true (it scores the prompt, generating nothing)", "max_tokens")
        if self.best_of not in (None, self.n):
            raise bad_request(f"best_of={self.best_of}: only best_of == n is supported", "best_of", "unsupported_parameter")

    def requested_logprobs(self) -> int | None:
        return self.logprobs

    def requested_prompt_logprobs(self) -> int | None:
        """echo with logprobs k scores the prompt with top-k too; echo with max_tokens 0 needs the prompt scored."""
        if not self.echo:
            return None
        return self.logprobs if self.logprobs is not None else (0 if self.requested_max_tokens() == 0 else None)

    def prompts(self) -> list[str | list[int]]:
        prompt = self.prompt
        if isinstance(prompt, str):
            prompts: list[str | list[int]] = [prompt]
        elif prompt and isinstance(prompt[0], int):
            prompts = [list(prompt)]  # type: ignore[arg-type]
        else:
            prompts = list(prompt)  # type: ignore[arg-type]
        if not prompts or any(len(p) == 0 for p in prompts):
            raise bad_request("prompt must be non-empty", "prompt")
        return prompts
