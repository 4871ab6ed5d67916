"""Structured outputs (SamplingParams.structured_outputs): JSON schema, any JSON object, regex and choice, applied as
a token mask per step; constrained rows obey their grammar for every seed and sample, unconstrained batch mates'
samples stay exactly what they are alone."""
from __future__ import annotations

import json
import re

import pytest

from lamina import SamplingParams
from lamina.errors import InvalidRequestError

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 120}},
          "required": ["name", "age"], "additionalProperties": False}
CHOICES = ["yes", "no", "maybe so"]
REGEX = r"\d{3}-[a-z]{2,4}"


def check_schema(text: str) -> None:
    value = json.loads(text)
    assert set(value) == {"name", "age"}, text
    assert isinstance(value["name"], str) and len(value["name"]) <= 12, text
    assert isinstance(value["age"], int) and 0 <= value["age"] <= 120, text


def _constrained_outputs(llm, prompt: str, structured: dict, seeds=(0, 1, 2), **params):
    params = {"max_tokens": 60, "temperature": 1.0, **params}
    batch = [SamplingParams(seed=s, n=2, structured_outputs=structured, **params)
             for s in seeds]
    return [o for req in llm.generate([prompt] * len(batch), batch, use_tqdm=False) for o in req.outputs]


def test_choice_regex_and_schema_on_the_tiny_model(tiny_llm):
    for out in _constrained_outputs(tiny_llm, "Pick one:", {"choice": CHOICES}):
        assert out.text in CHOICES and out.finish_reason == "stop"
    for out in _constrained_outputs(tiny_llm, "Code:", {"regex": REGEX}):
        assert re.fullmatch(REGEX, out.text) and out.finish_reason == "stop", out.text
    for out in _constrained_outputs(tiny_llm, "JSON:", {"json": SCHEMA}, seeds=(0, 1), top_p=0.9, max_tokens=200):
        if out.finish_reason == "stop":  # a random model may ramble inside the name; what it closes must parse
            check_schema(out.text)
        else:
            assert out.finish_reason == "length"
    greedy = tiny_llm.generate(["Pick one:"], SamplingParams(max_tokens=8, temperature=0,
                                                             structured_outputs={"choice": CHOICES}), use_tqdm=False)
    assert greedy[0].outputs[0].text in CHOICES


def test_unconstrained_batch_mates_keep_their_samples(tiny_llm):
    free = SamplingParams(max_tokens=12, temperature=0.9, seed=7, n=2)
    alone = tiny_llm.generate(["Hello there"], free, use_tqdm=False)[0]
    constrained = SamplingParams(max_tokens=12, temperature=0.9, seed=7, n=2, structured_outputs={"regex": REGEX})
    mixed = tiny_llm.generate(["Hello there", "Hello there"], [constrained, free], use_tqdm=False)
    assert [o.token_ids for o in mixed[1].outputs] == [o.token_ids for o in alone.outputs]
    assert all(re.fullmatch(REGEX, o.text) for o in mixed[0].outputs)
    again = tiny_llm.generate(["Hello there"], constrained, use_tqdm=False)[0]  # seeded: batch-independent
    assert [o.token_ids for o in again.outputs] == [o.token_ids for o in mixed[0].outputs]


def test_logprobs_stay_the_models(tiny_llm):
    free = tiny_llm.generate(["Pick one:"], SamplingParams(max_tokens=1, temperature=0, logprobs=0), use_tqdm=False)
    forced = tiny_llm.generate(["Pick one:"], SamplingParams(max_tokens=1, temperature=0, logprobs=0,
                                                             structured_outputs={"choice": ["no"]}), use_tqdm=False)
    token = forced[0].outputs[0].token_ids[0]
    assert forced[0].outputs[0].text == "no" or tiny_llm.engine.tokenizer.decode([token]) in "no"
    if free[0].outputs[0].token_ids[0] != token:  # a forced token is less likely than the free choice
        assert forced[0].outputs[0].logprobs[0].logprob < free[0].outputs[0].logprobs[0].logprob


@pytest.mark.parametrize("structured, field", [
    ({"json": {"type": "no-such-type"}}, "structured_outputs.json"),
    ({"regex": "(unclosed"}, "structured_outputs.regex"),
    ({"choice": []}, "structured_outputs.choice"),
    ({"json": {}, "regex": "a"}, "exactly one of"),
    ({"grammar_kind": 1}, "unknown field"),
])
def test_bad_constraints_are_one_line_errors(tiny_llm, structured, field):
    with pytest.raises(InvalidRequestError, match=re.escape(field)):
        tiny_llm.generate(["x"], SamplingParams(structured_outputs=structured), use_tqdm=False)


@pytest.mark.slow
def test_schema_json_object_regex_choice_on_the_real_model(real_llm):
    chat = [{"role": "user", "content": "Describe a person (name and age) as JSON."}]
    params = [SamplingParams(max_tokens=80, temperature=0.7, seed=s, n=2, structured_outputs={"json": SCHEMA})
              for s in (1, 2)]
    free = SamplingParams(max_tokens=20, temperature=0.7, seed=5)
    free_alone = real_llm.chat([chat], free, use_tqdm=False)[0].outputs[0].token_ids
    outs = real_llm.chat([chat, chat, chat], [*params, free], use_tqdm=False)
    for out in (o for req in outs[:2] for o in req.outputs):
        assert out.finish_reason == "stop", out.text
        check_schema(out.text)
    assert outs[2].outputs[0].token_ids == free_alone
    obj = real_llm.chat([chat], SamplingParams(max_tokens=120, temperature=0, structured_outputs={"json_object": True}),
                        use_tqdm=False)[0].outputs[0]
    assert obj.finish_reason == "stop" and isinstance(json.loads(obj.text), dict), obj.text
    ask = [{"role": "user", "content": "Is Paris the capital of France? Answer yes or no."}]
    answer = real_llm.chat([ask], SamplingParams(max_tokens=5, temperature=0, structured_outputs={"choice": CHOICES}),
                           use_tqdm=False)[0].outputs[0]
    assert answer.text in CHOICES
    phone = real_llm.generate(["Call me at"], SamplingParams(max_tokens=20, temperature=1, seed=3,
                                                            structured_outputs={"regex": r"\d{3}-\d{4}"}),
                              use_tqdm=False)[0].outputs[0]
    assert re.fullmatch(r"\d{3}-\d{4}", phone.text) and phone.finish_reason == "stop"


# --- the server's request fields (no model) and the chat template's continue_final_message ---

def _chat(**body):
    from lamina.server.protocol import ChatCompletionRequest

    return ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}], **body)


@pytest.mark.parametrize("body, want", [
    ({"response_format": {"type": "json_object"}}, {"json_object": True}),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}}}, {"json": SCHEMA}),
    ({"response_format": {"type": "text"}}, None),
    ({"guided_choice": CHOICES}, {"choice": CHOICES}),
    ({"guided_regex": REGEX}, {"regex": REGEX}),
    ({"guided_json": SCHEMA}, {"json": SCHEMA}),
    ({"structured_outputs": {"regex": REGEX}}, {"regex": REGEX}),
    ({}, None),
])
def test_server_fields_map_to_structured_outputs(body, want):
    assert _chat(**body).sampling_params(100).structured_outputs == want


@pytest.mark.parametrize("body, param", [
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "nope"}}}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format.json_schema.schema"),
    ({"response_format": {"type": "yaml"}}, "response_format.type"),
    ({"guided_regex": "(open"}, "guided_regex"),
    ({"guided_regex": "a", "response_format": {"type": "json_object"}}, "guided_regex"),
])
def test_bad_server_constraints_are_400s_naming_the_field(body, param):
    from lamina.server.errors import APIError

    with pytest.raises(APIError) as info:
        _chat(**body).sampling_params(100)
    assert info.value.status == 400 and info.value.param == param


def test_continue_final_message_flags():
    from lamina.server.errors import APIError

    body = _chat(continue_final_message=True)
    body.check_supported()
    assert body.add_generation_prompt is False
    with pytest.raises(APIError):
        _chat(continue_final_message=True, add_generation_prompt=True).check_supported()


@pytest.fixture(scope="module")
def smollm2_tokenizer(real_model_path):
    from lamina.engine.loader.gguf_reader import GGUFFile
    from lamina.engine.loader.gguf_tokenizer import tokenizer_from_gguf

    return tokenizer_from_gguf(GGUFFile.open(real_model_path))


def test_continue_final_message_leaves_the_assistant_turn_open(smollm2_tokenizer):
    messages = [{"role": "user", "content": "Count to five."}, {"role": "assistant", "content": "1, 2, 3"}]
    closed = smollm2_tokenizer.apply_chat_template(messages, add_generation_prompt=False)
    opened = smollm2_tokenizer.apply_chat_template(messages, add_generation_prompt=False, continue_final_message=True)
    assert opened.endswith("<|im_start|>assistant\n1, 2, 3") and closed.startswith(opened)
    assert len(closed) > len(opened)  # the end-of-turn that continuing drops
    with pytest.raises(InvalidRequestError, match="continue_final_message"):
        smollm2_tokenizer.apply_chat_template(messages, add_generation_prompt=True, continue_final_message=True)


# --- specs ask for a constraint; the OpenAI backend forwards it ---

def test_a_judge_component_passes_its_constraint_to_its_calls():
    from tests.archs import run_spec
    from tests.scripted import ScriptedBackend

    choice = {"choice": ["Verdict: correct", "Verdict: incorrect"]}
    backend = ScriptedBackend({"Check the reasoning": "Verdict: correct"})
    spec = {"name": "s", "models": {"m": {"model": "scripted"}},
            "layers": [[{"type": "generate", "samples": 2}], [{"type": "verify", "structured_outputs": choice}]]}
    run_spec(spec, [{"role": "user", "content": "What is 2 + 2?"}], backends={"m": backend})
    verify = [c for c in backend.calls if "Check the reasoning" in c.prompt]
    assert len(verify) == 2 and all(c.params.structured_outputs == choice for c in verify)
    assert all(c.params.structured_outputs is None for c in backend.calls if c not in verify)


@pytest.mark.parametrize("structured, fields", [
    ({"json": SCHEMA}, {"response_format": {"type": "json_schema", "json_schema": {"name": "output", "schema": SCHEMA}}}),
    ({"json_object": True}, {"response_format": {"type": "json_object"}}),
    ({"regex": REGEX}, {"guided_regex": REGEX}),
    ({"choice": CHOICES}, {"guided_choice": CHOICES}),
])
def test_openai_backend_sends_the_constraint_as_request_fields(structured, fields):
    from lamina.backends import get_backend

    backend = get_backend("openai", "m", base_url="http://127.0.0.1:9")
    body = backend._body([{"role": "user", "content": "hi"}], None, SamplingParams(structured_outputs=structured))
    assert "structured_outputs" not in body
    assert {k: body[k] for k in fields} == fields


def test_architectures_list_the_constraint_and_prompt_fields_as_ignored():
    body = _chat(response_format={"type": "json_object"}, continue_final_message=True, temperature=0.5)
    assert body.sampling_fields_set() == ["continue_final_message", "response_format", "temperature"]
