"""The openai backend, and an architecture using it, against a real `lamina serve` subprocess on 127.0.0.1."""
from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from lamina.backends import get_backend
from lamina.engine.sampling_params import SamplingParams
from lamina.errors import BackendError

from tests.archs import run_spec
from tests.serving import serve

pytestmark = pytest.mark.slow
KEY_ENV = "LAMINA_TEST_SERVER_KEY"
MESSAGES = [{"role": "user", "content": "What is 3 + 4?"}]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serve("--model", "default", "--api-key", "secret", "--kv-cache-memory-gb", "0.25", timeout_s=240) as base:
        yield base + "/v1"


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "secret")


def test_complete_with_n_and_seed_against_lamina_serve(server, key):
    backend = get_backend("openai", "default", base_url=server, api_key_env=KEY_ENV)

    async def go():
        try:
            one = await backend.complete(MESSAGES, None, SamplingParams(n=3, seed=11, temperature=0.9, max_tokens=6))
            two = await backend.complete(MESSAGES, None, SamplingParams(n=3, seed=11, temperature=0.9, max_tokens=6))
            text = await backend.complete(None, "The capital of France is", SamplingParams(max_tokens=4, temperature=0))
            return one, two, text
        finally:
            await backend.aclose()

    one, two, text = asyncio.run(go())
    assert len(one) == 3 and backend.supports_n is True
    assert [c.text for c in one] == [c.text for c in two]  # seeded sampling is reproducible over HTTP
    assert one.prompt_tokens > 0 and 0 < one.completion_tokens <= 18
    assert text[0].text and text[0].num_tokens <= 4


def test_a_wrong_key_is_a_clear_backend_error(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "wrong")
    backend = get_backend("openai", "default", base_url=server, api_key_env=KEY_ENV)

    async def go():
        try:
            await backend.complete(MESSAGES, None, SamplingParams(max_tokens=2))
        finally:
            await backend.aclose()

    with pytest.raises(BackendError, match="HTTP 401"):
        asyncio.run(go())


def test_architecture_over_http_replays_from_cache(server, key, tmp_path):
    spec = {"name": "remote", "models": {"srv": {"backend": "openai", "model": "default", "base_url": server,
                                                 "api_key_env": KEY_ENV, "params": {"max_tokens": 8}}},
            "layers": [[{"type": "generate", "samples": 3}], [{"type": "vote", "extract": "number", "keep": "all"}]]}

    first, second = (run_spec(spec, MESSAGES, cache=tmp_path / "calls.sqlite") for _ in range(2))
    assert first.usage.calls == 1 and len(first.candidates) == 3 and first.usage.completion_tokens > 0
    assert second.usage.calls == 0 and second.usage.cached_calls == 1 and second.candidates == first.candidates


def test_vllm_sampling_fields_reach_lamina_serve_and_take_effect(server, key, real_model_path):
    from lamina.engine.loader.gguf_reader import GGUFFile
    from lamina.engine.loader.gguf_tokenizer import tokenizer_from_gguf

    backend = get_backend("openai", "default", base_url=server, api_key_env=KEY_ENV)
    prompt = "Count: 1, 2, 3, 4,"

    def text(**fields) -> SamplingParams:
        return SamplingParams(max_tokens=8, ignore_eos=True, **fields)

    async def go():
        try:
            greedy = (await backend.complete(None, prompt, text(temperature=0)))[0].text
            stop = greedy.strip()[2:4]
            token_ids = tokenizer.encode(greedy)
            calls = {"hot": text(temperature=1.5, seed=3), "top_k": text(temperature=1.5, seed=3, top_k=1),
                     "min_p": text(temperature=1.5, seed=3, min_p=1.0),
                     "repetition_penalty": text(temperature=0, repetition_penalty=5.0),
                     "stop": text(temperature=0, stop=[stop]),
                     "include_stop_str_in_output": text(temperature=0, stop=[stop], include_stop_str_in_output=True),
                     "stop_token_ids": text(temperature=0, stop_token_ids=[token_ids[3]])}
            outs = {name: (await backend.complete(None, prompt, params))[0] for name, params in calls.items()}
            chat = [{"role": "user", "content": "Say hello."}]
            for name, ignore_eos in (("eos", False), ("ignore_eos", True)):
                params = SamplingParams(temperature=0, max_tokens=48, ignore_eos=ignore_eos)
                outs[name] = (await backend.complete(chat, None, params))[0]
            return greedy, stop, token_ids, outs
        finally:
            await backend.aclose()

    tokenizer = tokenizer_from_gguf(GGUFFile.open(real_model_path))
    greedy, stop, token_ids, outs = asyncio.run(go())
    assert outs["hot"].text != greedy  # so that top_k=1 and min_p=1 giving the greedy text is their doing
    assert outs["top_k"].text == greedy and outs["min_p"].text == greedy
    assert outs["repetition_penalty"].text != greedy
    assert outs["stop"].text == greedy[: greedy.index(stop)] and outs["stop"].finish_reason == "stop"
    assert outs["include_stop_str_in_output"].text == greedy[: greedy.index(stop) + len(stop)]
    assert outs["stop_token_ids"].finish_reason == "stop" and outs["stop_token_ids"].num_tokens <= 4
    assert outs["eos"].finish_reason == "stop" and outs["eos"].num_tokens < 48
    assert outs["ignore_eos"].finish_reason == "length" and outs["ignore_eos"].num_tokens == 48
