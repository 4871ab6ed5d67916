"""SamplingParams is the one definition of the sampling fields: the spec's model params, the server's request
fields and the CLI flags take their fields, allowed values and help from it."""
from __future__ import annotations

import argparse
import re

import pytest
from pydantic import ValidationError

from lamina.engine.cli import CLI_SAMPLING_FIELDS, add_sampling_arguments, sampling_params
from lamina.engine.sampling_params import SAMPLING_FIELDS, SamplingParams, pydantic_fields
from lamina.errors import InvalidRequestError, SpecError
from lamina.server.protocol import ChatCompletionRequest, CompletionRequest
from lamina.spec import parse_spec

MSG = [{"role": "user", "content": "hi"}]
# A value out of range for each field that has a range (the others are checked by type only).
OUT_OF_RANGE = {"n": 0, "temperature": -1, "top_p": 0, "top_k": 0, "min_p": 1.5, "repetition_penalty": 0,
                "max_tokens": 0, "stop": [""], "logprobs": 21}
SET = {"temperature": 0.3, "top_p": 0.9, "top_k": 5, "min_p": 0.05, "repetition_penalty": 1.2, "seed": 9,
       "max_tokens": 7, "stop": ["###"], "stop_token_ids": [2, 7], "ignore_eos": True,
       "include_stop_str_in_output": True, "structured_outputs": {"choice": ["yes", "no"]},
       "num_speculative_tokens": 3, "prompt_lookup_max": 5, "prompt_lookup_min": 1}
CLI_SET = {k: v for k, v in SET.items() if k != "structured_outputs"}  # a constraint is no CLI flag


def spec_with(params: dict) -> dict:
    return {"name": "t", "models": {"m": {"params": params}}, "layers": [{"type": "generate"}]}


def expected(name: str) -> str:
    return f"expected {SAMPLING_FIELDS[name].expected}"


@pytest.mark.parametrize("name", sorted(OUT_OF_RANGE))
def test_one_range_everywhere(name):
    value = OUT_OF_RANGE[name]
    with pytest.raises(InvalidRequestError, match=rf"^SamplingParams\.{name}=.*: {re.escape(expected(name))}$"):
        SamplingParams(**{name: value})
    if name not in ("n", "logprobs"):  # per-call fields: not model defaults
        with pytest.raises(SpecError) as info:
            parse_spec(spec_with({name: value}), "a.yaml")
        assert f"models.m.params.{name}: {expected(name)}" in str(info.value)
    if name != "stop":  # OpenAI's stop (a string or a list) is checked by the protocol itself
        request_field = "top_logprobs" if name == "logprobs" else name
        extra = {"logprobs": True} if name == "logprobs" else {}
        with pytest.raises(ValidationError) as invalid:
            ChatCompletionRequest(model="m", messages=MSG, **{request_field: value}, **extra)
        (error,) = invalid.value.errors()
        assert error["loc"] == (request_field,) and error["msg"] == expected(name)


def test_spec_params_take_every_field_but_the_per_call_ones():
    parsed = parse_spec(spec_with(SET))
    assert parsed.models["m"].params.values() == SET
    assert set(SET) == set(SAMPLING_FIELDS) - {"n", "logprobs", "prompt_logprobs"}
    for name in ("n", "colour"):
        with pytest.raises(SpecError, match=rf"models\.m\.params\.{name}: Extra inputs are not permitted"):
            parse_spec(spec_with({name: 2}), "a.yaml")


@pytest.mark.parametrize("request_type", [ChatCompletionRequest, CompletionRequest])
def test_server_requests_carry_every_field_into_sampling_params(request_type):
    shape = {"messages": MSG} if request_type is ChatCompletionRequest else {"prompt": "x"}
    params = request_type(model="m", n=2, **shape, **SET).sampling_params(default_max_tokens=100)
    assert params == SamplingParams(n=2, **SET)


def test_cli_has_a_flag_per_field_with_its_help_and_the_commands_defaults():
    parser = argparse.ArgumentParser()
    add_sampling_arguments(parser, temperature=0.7, max_tokens=128)
    helps = {a.dest: a.help for a in parser._actions}
    assert set(CLI_SAMPLING_FIELDS) == set(SAMPLING_FIELDS) - {"logprobs", "prompt_logprobs", "structured_outputs"}
    assert set(CLI_SAMPLING_FIELDS) <= set(helps)
    assert all(SAMPLING_FIELDS[name].help in helps[name] for name in CLI_SAMPLING_FIELDS)
    assert sampling_params(parser.parse_args([])) == SamplingParams(temperature=0.7, max_tokens=128)
    args = parser.parse_args(["-n", "2", "--temperature", "0.3", "--top-p", "0.9", "--top-k", "5", "--min-p", "0.05",
                              "--repetition-penalty", "1.2", "--seed", "9", "--max-tokens", "7", "--stop", "###",
                              "--stop-token-ids", "2", "--stop-token-ids", "7", "--ignore-eos",
                              "--include-stop-str-in-output", "--num-speculative-tokens", "3",
                              "--prompt-lookup-max", "5", "--prompt-lookup-min", "1"])
    assert sampling_params(args) == SamplingParams(n=2, **CLI_SET)
    with pytest.raises(InvalidRequestError, match=re.escape(f"SamplingParams.top_k=0: {expected('top_k')}")):
        sampling_params(parser.parse_args(["--top-k", "0"]))


def test_pydantic_fields_for_a_chosen_subset():
    from pydantic import create_model

    Overrides = create_model("Overrides", **pydantic_fields(("temperature", "top_p", "max_tokens")))
    assert set(Overrides.model_fields) == {"temperature", "top_p", "max_tokens"}
    assert Overrides().temperature is None and Overrides.model_fields["top_p"].description == SAMPLING_FIELDS["top_p"].help
    with pytest.raises(ValidationError, match=re.escape(expected("max_tokens"))):
        Overrides(max_tokens=0)
    with pytest.raises(ValueError, match="not SamplingParams fields: colour"):
        pydantic_fields(("colour",))
