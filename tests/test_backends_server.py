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
