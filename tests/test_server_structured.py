"""`lamina serve` with response_format (json_object, json_schema), vLLM's guided_* fields and continue_final_message,
streamed and not, on the real model."""
from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.serving import post, serve

pytestmark = pytest.mark.slow  # a `lamina serve` of the real model

SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"],
          "additionalProperties": False}
ASK = [{"role": "user", "content": "What is the capital of France? Reply in JSON."}]


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with serve("--model", "default", "--kv-cache-memory-gb", "0.25") as url:
        yield url


def streamed_text(base: str, path: str, **body) -> str:
    text = []
    with httpx.stream("POST", base + path, json={"model": "default", "stream": True, **body}, timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                choice = json.loads(line[6:])["choices"]
                if choice:
                    text.append(choice[0].get("delta", {}).get("content") or choice[0].get("text") or "")
    return "".join(text)


def test_response_format_json_schema_on_chat_streamed_and_not(base):
    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA}}
    r = post(base, "/v1/chat/completions", messages=ASK, max_tokens=40, temperature=0.7, seed=3, n=2,
             response_format=fmt)
    assert r.status_code == 200, r.text
    for choice in r.json()["choices"]:
        assert choice["finish_reason"] == "stop"
        assert set(json.loads(choice["message"]["content"])) == {"city"}
    streamed = streamed_text(base, "/v1/chat/completions", messages=ASK, max_tokens=40, temperature=0.7, seed=3,
                             response_format=fmt)
    assert streamed == r.json()["choices"][0]["message"]["content"]


def test_json_object_and_guided_fields_on_completions(base):
    r = post(base, "/v1/completions", prompt='Cat: {"name": "Tom", "age": 3}\nDog:', max_tokens=150, temperature=0,
             response_format={"type": "json_object"})
    assert r.json()["choices"][0]["finish_reason"] == "stop"
    assert isinstance(json.loads(r.json()["choices"][0]["text"]), dict)
    r = post(base, "/v1/completions", prompt="Is the sky blue?", max_tokens=5, temperature=0,
             guided_choice=["yes", "no"])
    assert r.json()["choices"][0]["text"] in ("yes", "no")
    assert streamed_text(base, "/v1/completions", prompt="Call me at", max_tokens=12, temperature=1, seed=1,
                         guided_regex=r"\d{3}-\d{4}").count("-") == 1


def test_an_invalid_schema_is_a_400_naming_the_field(base):
    r = post(base, "/v1/chat/completions", messages=ASK,
             response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format"


def test_continue_final_message_continues_the_assistant_text(base):
    messages = [{"role": "user", "content": "List the days of the week."},
                {"role": "assistant", "content": "Monday, Tuesday, Wednes"}]
    r = post(base, "/v1/chat/completions", messages=messages, max_tokens=3, temperature=0,
             continue_final_message=True, add_generation_prompt=False)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"].startswith("day")  # right after "Wednes"
