"""`lamina serve` as a real subprocess on loopback, driven by the official openai client and raw httpx."""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.serving import serve

pytestmark = pytest.mark.slow  # every test talks to a `lamina serve` of the real model

API_KEY = "test-key"
MESSAGES = [{"role": "user", "content": "Name three colours."}]


ARCH_SPEC = """
name: tiny_fuse
models:
  small: {model: default, params: {max_tokens: 6}}
layers:
  - - {type: generate, model: small, samples: 2, temperature: 0.8}
  - - {type: fuse, model: small, max_tokens: 6}
"""


@pytest.fixture(scope="module")
def real_server(tmp_path_factory) -> Iterator[str]:
    """The embedded model as `default`, plus a two-layer architecture on it as `arch:tiny_fuse`."""
    folder = tmp_path_factory.mktemp("serve")
    (folder / "tiny_fuse.yaml").write_text(ARCH_SPEC)
    with serve("--model", "default", "--api-key", API_KEY, "--kv-cache-memory-gb", "0.25",
               "--arch", str(folder / "tiny_fuse.yaml"), "--arch-cache", str(folder / "calls.sqlite")) as base:
        yield base


@pytest.fixture(scope="module")
def small_queue_server() -> Iterator[str]:
    """The real model, so that one streamed request stays in flight for seconds (the tiny model finishes at once)."""
    with serve("--model", "small=default", "--max-queue", "1", "--num-kv-blocks", "256") as base:
        yield base


@pytest.fixture()
def client(real_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=real_server + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


def stats(base: str) -> dict:
    return httpx.get(base + "/v1/internal/stats", headers=auth(), timeout=10).json()["models"]


def metric(base: str, series: str) -> float:
    for line in httpx.get(base + "/metrics", timeout=10).text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def chat(client: openai.OpenAI, **kw):
    return client.chat.completions.create(model="default", messages=MESSAGES, **{"max_tokens": 8, **kw})


def test_models_lists_the_served_model(client):
    models = {m.id: m.model_extra["lamina"]["kind"] for m in client.models.list().data}
    assert models == {"default": "model", "arch:tiny_fuse": "architecture"}
    assert client.models.retrieve("arch:tiny_fuse").id == "arch:tiny_fuse"
    assert client.models.retrieve("default").model_extra["lamina"]["max_model_len"] == 8192


def test_chat_non_streaming(client):
    out = chat(client, temperature=0)
    choice = out.choices[0]
    assert out.object == "chat.completion" and out.model == "default"
    assert choice.message.role == "assistant" and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert 0 < out.usage.completion_tokens <= 8 and out.usage.prompt_tokens > 5
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_streaming_deltas_join_to_the_non_streamed_answer(client):
    whole = chat(client, seed=11, temperature=0.8, max_tokens=12)
    stream = chat(client, seed=11, temperature=0.8, max_tokens=12, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text == whole.choices[0].message.content
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_n4_seeds_reproducible(client):
    a = chat(client, n=4, seed=5, temperature=1.0)
    b = chat(client, n=4, seed=5, temperature=1.0)
    c = chat(client, n=4, seed=6, temperature=1.0)
    texts = lambda r: [ch.message.content for ch in sorted(r.choices, key=lambda ch: ch.index)]
    assert [ch.index for ch in a.choices] == [0, 1, 2, 3]
    assert texts(a) == texts(b)
    assert len(set(texts(a))) > 1, "n=4 samples at temperature 1 should differ"
    assert texts(a) != texts(c)
    assert 4 <= a.usage.completion_tokens <= 4 * 8


def test_chat_logprobs(client):
    out = chat(client, temperature=0, logprobs=True, top_logprobs=3)
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        tops = [t.logprob for t in entry.top_logprobs]
        assert tops == sorted(tops, reverse=True)
        assert entry.logprob == pytest.approx(tops[0], abs=1e-5)  # greedy picks the most likely token
        assert entry.top_logprobs[0].token == entry.token
    streamed = [e for chunk in chat(client, temperature=0, logprobs=True, top_logprobs=3, stream=True)
                for c in chunk.choices if c.logprobs for e in c.logprobs.content]
    assert [(e.token, round(e.logprob, 4)) for e in streamed] == [(e.token, round(e.logprob, 4)) for e in content]


def test_completions_batch_prompts_and_logprobs(client):
    out = client.completions.create(model="default", prompt=["The capital of France is", "1, 2, 3,"], max_tokens=4,
                                    temperature=0, n=2, logprobs=2)
    assert out.object == "text_completion" and [c.index for c in out.choices] == [0, 1, 2, 3]
    assert out.choices[0].text == out.choices[1].text  # greedy: both samples of a prompt agree
    assert out.choices[0].text != out.choices[2].text
    for c in out.choices:
        assert len(c.logprobs.tokens) == len(c.logprobs.token_logprobs) == len(c.logprobs.top_logprobs)
        assert all(len(top) <= 2 for top in c.logprobs.top_logprobs)
    assert out.usage.completion_tokens == sum(len(c.logprobs.tokens) for c in out.choices)


def test_stop_string(client):
    out = client.completions.create(model="default", prompt="1, 2, 3, 4,", max_tokens=16, temperature=0, stop=["7"])
    assert "7" not in out.choices[0].text and out.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("stop", [["lo", "ell"], ["ell", "lo"]])
def test_earliest_stop_string_wins(client, stop):
    body = dict(model="default", prompt="hello hello hello hello hello hello", max_tokens=1, temperature=0, stop=stop)
    out = client.completions.create(**body)
    streamed = "".join(c.choices[0].text for c in client.completions.create(**body, stream=True) if c.choices)
    assert out.choices[0].text == streamed == " h"  # the token is " hello": "ell" starts before "lo"
    assert out.choices[0].finish_reason == "stop"


JAPANESE = [{"role": "user", "content": "Translate 'thank you' into Japanese. Reply with only the Japanese words."}]


def test_chat_logprob_bytes_are_each_tokens_raw_bytes(client):
    out = client.chat.completions.create(model="default", messages=JAPANESE, max_tokens=2, temperature=0, logprobs=True)
    content = out.choices[0].logprobs.content
    assert out.choices[0].message.content == "\u304a"  # two tokens, each holding part of the character
    assert [e.bytes for e in content] == [[0xE3, 0x81], [0x8A]]
    assert bytes(b for e in content for b in e.bytes).decode() == out.choices[0].message.content


def test_completion_logprob_bytes_and_offsets_follow_the_text(client, real_server, real_loaded_model):
    prompt = real_loaded_model.tokenizer.apply_chat_template(JAPANESE, add_generation_prompt=True)
    body = dict(model="default", prompt=prompt, max_tokens=6, temperature=0, logprobs=1)
    choice = client.completions.create(**body).choices[0]
    tokens = choice.logprobs.tokens
    raw = [bytes(e["bytes"]) for e in httpx.post(real_server + "/v1/chat/completions", headers=auth(), timeout=60, json={
        "model": "default", "messages": JAPANESE, "max_tokens": 6, "temperature": 0, "logprobs": True,
    }).json()["choices"][0]["logprobs"]["content"]]
    assert len(raw) == len(tokens) == 6
    offsets = choice.logprobs.text_offset
    assert offsets == sorted(offsets) and offsets[0] == 0
    for i, at in enumerate(offsets):  # each token starts after the characters completed before it
        assert choice.text[:at] == b"".join(raw[:i]).decode("utf-8", "ignore")
    streamed = [o for c in client.completions.create(**body, stream=True) if c.choices and c.choices[0].logprobs
                for o in c.choices[0].logprobs.text_offset]
    assert streamed == offsets


@pytest.fixture(scope="module")
def small_pool_server() -> Iterator[str]:
    """The real model with a 16-block KV pool: 256 tokens in all."""
    with serve("--model", "default", "--num-kv-blocks", "16") as base:
        yield base


def test_a_request_outgrowing_the_kv_pool_ends_with_length_and_others_flow(small_pool_server):
    client = openai.OpenAI(base_url=small_pool_server + "/v1", api_key="none", max_retries=0, timeout=300)
    stream = client.completions.create(model="default", prompt="Once upon a time", max_tokens=300, temperature=0,
                                       stream=True, stream_options={"include_usage": True},
                                       extra_body={"ignore_eos": True})
    chunks, short = [], None
    for chunk in stream:
        chunks.append(chunk)
        if short is None and len(chunks) == 20:  # sent while the long one holds most of the pool
            short = client.completions.create(model="default", prompt="Hi", max_tokens=4, temperature=0,
                                              extra_body={"ignore_eos": True})
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    usage = chunks[-1].usage
    assert finishes == ["length"] and usage.prompt_tokens + usage.completion_tokens == 16 * 16
    assert short is not None and short.usage.completion_tokens == 4 and short.choices[0].finish_reason == "length"
    health = httpx.get(small_pool_server + "/v1/internal/stats", timeout=10).json()["models"]["default"]
    assert health["num_free_blocks"] == health["num_total_blocks"] == 16


def _error(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


@pytest.mark.parametrize("payload, param", [
    ({"messages": []}, "messages"),
    ({"temperature": -1}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"n": 0}, "n"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"top_logprobs": 2}, "top_logprobs"),
])
def test_bad_input_is_400(real_server, payload, param):
    body = {"model": "default", "messages": MESSAGES, "max_tokens": 4, **payload}
    r = httpx.post(real_server + "/v1/chat/completions", json=body, headers=auth(), timeout=30)
    assert r.status_code == 400, r.text
    err = _error(r)
    assert err["type"] == "invalid_request_error" and err["param"] == param


def test_malformed_json_is_400(real_server):
    r = httpx.post(real_server + "/v1/chat/completions", content=b"{not json", timeout=30,
                   headers={**auth(), "Content-Type": "application/json"})
    assert r.status_code == 400 and "JSON" in _error(r)["message"]


def test_prompt_too_long_is_400(client):
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model="default", prompt=[1] * 9000, max_tokens=2)
    assert "max_model_len" in exc.value.body["message"]


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="gpt-9", messages=MESSAGES)
    assert exc.value.body["code"] == "model_not_found" and "default" in exc.value.body["message"]


def test_api_key_required(real_server):
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = httpx.post(real_server + "/v1/chat/completions", json={"model": "default", "messages": MESSAGES},
                       headers=headers, timeout=30)
        assert r.status_code == 401 and _error(r)["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=real_server + "/v1", api_key="wrong", max_retries=0).models.list()
    assert httpx.get(real_server + "/health", timeout=10).status_code == 200  # probes need no key


def test_disconnect_aborts_and_frees_kv_blocks(real_server):
    body = {"model": "default", "messages": [{"role": "user", "content": "Write a very long story."}],
            "max_tokens": 4000, "n": 2, "stream": True, "temperature": 1.0, "seed": 1}
    with httpx.Client(base_url=real_server, headers=auth(), timeout=60) as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            lines = r.iter_lines()  # keep the iterator: dropping it closes the connection
            first = next(line for line in lines if line.startswith("data: "))
            assert json.loads(first[6:])["object"] == "chat.completion.chunk"
            during = stats(real_server)["default"]
            assert during["num_free_blocks"] < during["num_total_blocks"] and during["num_running"] == 2
        deadline = time.monotonic() + 20
        while (s := stats(real_server)["default"])["num_free_blocks"] != s["num_total_blocks"]:
            assert time.monotonic() < deadline, f"KV blocks not freed after disconnect: {s}"
            time.sleep(0.1)
        assert s["num_running"] == 0 and s["num_waiting"] == 0
        metrics = http.get("/metrics").text
    assert 'lamina_kv_blocks_in_use{model="default"} 0' in metrics
    assert 'lamina_aborted_requests_total{model="default"}' in metrics


def test_non_streaming_client_timeout_frees_kv_blocks(real_server):
    body = {"model": "default", "messages": MESSAGES, "max_tokens": 4000, "ignore_eos": True}
    aborted = 'lamina_requests_total{endpoint="chat",model="default",outcome="aborted"}'
    before = metric(real_server, aborted)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(real_server + "/v1/chat/completions", json=body, headers=auth(), timeout=2)
    deadline = time.monotonic() + 20
    while (s := stats(real_server)["default"])["num_free_blocks"] != s["num_total_blocks"]:
        assert time.monotonic() < deadline, f"KV blocks not freed after the client left: {s}"
        time.sleep(0.1)
    assert metric(real_server, aborted) == before + 1


def test_completions_stream_several_prompts(client):
    prompts = ["Roses are", "The sky is"]
    whole = client.completions.create(model="default", prompt=prompts, max_tokens=5, temperature=0, n=2)
    text: dict[int, str] = {}
    finish: dict[int, str] = {}
    for chunk in client.completions.create(model="default", prompt=prompts, max_tokens=5, temperature=0, n=2,
                                           stream=True):
        for c in chunk.choices:
            text[c.index] = text.get(c.index, "") + c.text
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    assert text == {c.index: c.text for c in whole.choices}
    assert finish == {c.index: c.finish_reason for c in whole.choices}


def test_32_concurrent_streaming_clients_complete(real_server):
    async def one(client: openai.AsyncOpenAI, i: int) -> tuple[str, str | None]:
        stream = await client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": f"Count to {i}."}], max_tokens=6, seed=i,
            stream=True)
        text, finish = "", None
        async for chunk in stream:
            for choice in chunk.choices:
                text += choice.delta.content or ""
                finish = choice.finish_reason or finish
        return text, finish

    async def peak_queue_depth(done: asyncio.Event) -> int:
        peak = 0
        async with httpx.AsyncClient(base_url=real_server, headers=auth(), timeout=30) as http:
            while not done.is_set():
                peak = max(peak, (await http.get("/v1/internal/stats")).json()["queue_depth"])
                await asyncio.sleep(0.05)
        return peak

    async def main() -> tuple[list[tuple[str, str | None]], int]:
        done = asyncio.Event()
        watcher = asyncio.create_task(peak_queue_depth(done))
        async with openai.AsyncOpenAI(base_url=real_server + "/v1", api_key=API_KEY, max_retries=0, timeout=300) as c:
            results = await asyncio.gather(*(one(c, i) for i in range(32)))
        done.set()
        return results, await watcher

    results, peak = asyncio.run(main())
    assert len(results) == 32 and peak >= 16, f"only {peak} requests were ever in flight together"
    assert all(finish in ("stop", "length") for _, finish in results), results
    assert sum(bool(text) for text, _ in results) >= 30  # a sample may end with EOS at once
    s = stats(real_server)["default"]
    assert s["num_free_blocks"] == s["num_total_blocks"]


def test_architecture_as_a_model_sums_inner_usage_and_returns_trace(client):
    msgs = [{"role": "user", "content": "Give one fruit."}]
    out = client.chat.completions.create(model="arch:tiny_fuse", messages=msgs, n=2, seed=40,
                                         extra_body={"lamina": {"trace": True}})
    lamina = out.model_extra["lamina"]
    assert [c.index for c in out.choices] == [0, 1] and all(c.message.content for c in out.choices)
    assert lamina["seeds"] == [40, 41] and len(lamina["trace"]) == 2
    inner = lamina["usage"]
    assert inner["calls"] + inner["cached_calls"] == 4  # generate (n=2 in one call) + fuse, for each of 2 runs
    assert out.usage.prompt_tokens == inner["prompt_tokens"] and out.usage.completion_tokens == inner["completion_tokens"]
    parts = inner["by_component"].values()
    assert out.usage.completion_tokens == sum(p["completion_tokens"] for p in parts)
    calls = [c for run in lamina["trace"] for c in run if "completion_tokens" in c]
    assert sum(c["completion_tokens"] for c in calls) == out.usage.completion_tokens

    again = client.chat.completions.create(model="arch:tiny_fuse", messages=msgs, seed=40)
    assert again.choices[0].message.content == out.choices[0].message.content  # same seed, same answer
    assert "trace" not in again.model_extra["lamina"] and again.model_extra["lamina"]["usage"]["cached_calls"] == 2
    assert again.model_extra["lamina"]["sampling"].startswith("seeded")
    # a replay costs what the run cost (usage's tokens) and spends nothing now (spent_*)
    assert again.usage.model_extra["spent_tokens"] == 0 and again.usage.total_tokens > 0
    assert out.usage.model_extra["spent_tokens"] == out.usage.total_tokens  # nothing was cached the first time
    assert out.model_extra["lamina"]["ignored_params"] == []
    tuned = client.chat.completions.create(model="arch:tiny_fuse", messages=msgs, seed=40, temperature=0.1,
                                           max_tokens=3, stop=["x"])
    assert tuned.model_extra["lamina"]["ignored_params"] == ["max_tokens", "stop", "temperature"]
    assert tuned.choices[0].message.content == out.choices[0].message.content  # the spec's sampling, not the request's

    stream = client.chat.completions.create(model="arch:tiny_fuse", messages=msgs, seed=41, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == out.choices[1].message.content
    assert chunks[-1].usage is not None


def test_architecture_without_a_seed_samples_afresh(client):
    msgs = [{"role": "user", "content": "Name a colour."}]
    first, second = (client.chat.completions.create(model="arch:tiny_fuse", messages=msgs) for _ in range(2))
    for out in (first, second):
        lamina = out.model_extra["lamina"]
        assert lamina["sampling"].startswith("fresh") and lamina["usage"]["cached_calls"] == 0
        assert out.usage.model_extra["spent_tokens"] == out.usage.total_tokens > 0
    assert first.model_extra["lamina"]["seeds"] != second.model_extra["lamina"]["seeds"]


def test_architecture_rejects_logprobs(client):
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="arch:tiny_fuse", messages=MESSAGES, logprobs=True)
    assert exc.value.body["param"] == "logprobs"


def test_metrics_exposition(real_server):
    assert httpx.get(real_server + "/v1/models", timeout=10).status_code == 401
    text = httpx.get(real_server + "/metrics", timeout=10).text
    for name in ("lamina_requests_total", "lamina_prompt_tokens_total", "lamina_completion_tokens_total",
                 "lamina_queue_depth", "lamina_kv_blocks_in_use", "lamina_request_latency_seconds_bucket",
                 "lamina_time_to_first_token_seconds_count", "lamina_http_responses_total"):
        assert name in text
    assert 'lamina_http_responses_total{path="/v1/models",status="401"}' in text
    assert 'lamina_queue_capacity 256' in text


COPYING = "Repeat exactly: the quick brown fox jumps over the lazy dog. the quick brown fox jumps over the lazy dog."


def test_metrics_count_speculative_draft_and_accepted_tokens(real_server, real_llm):
    """vLLM's spec_decode counters, fed from the engine's RequestOutput counts: the same as the engine gives."""
    from lamina import SamplingParams

    series = [f'lamina_spec_decode_num_{kind}_tokens_total{{model="default"}}' for kind in ("draft", "accepted")]
    speculative = dict(max_tokens=24, temperature=0, ignore_eos=True, num_speculative_tokens=4, prompt_lookup_min=1)
    expected = real_llm.generate(COPYING, SamplingParams(**speculative))[0]
    assert expected.num_draft_tokens > 0 and 0 < expected.num_accepted_tokens <= expected.num_draft_tokens
    for stream in (False, True):
        before = [metric(real_server, s) for s in series]
        body = {"model": "default", "prompt": COPYING, "stream": stream, **speculative}
        response = httpx.post(real_server + "/v1/completions", json=body, headers=auth(), timeout=120)
        assert response.status_code == 200
        if not stream:
            assert response.json()["choices"][0]["text"] == expected.outputs[0].text
        after = [metric(real_server, s) for s in series]
        assert [a - b for a, b in zip(after, before)] == [expected.num_draft_tokens, expected.num_accepted_tokens]
    plain = {"model": "default", "prompt": COPYING, "max_tokens": 8, "temperature": 0}
    assert httpx.post(real_server + "/v1/completions", json=plain, headers=auth(), timeout=120).status_code == 200
    assert [metric(real_server, s) for s in series] == after  # no speculation, nothing counted
    text = httpx.get(real_server + "/metrics", timeout=10).text
    assert "# TYPE lamina_spec_decode_num_draft_tokens_total counter" in text


def test_queue_full_is_429_and_recovers(small_queue_server):
    body = {"model": "small", "prompt": "Once upon a time", "max_tokens": 3000, "stream": True, "ignore_eos": True}
    client = openai.OpenAI(base_url=small_queue_server + "/v1", api_key="unused", max_retries=0, timeout=60)
    with httpx.Client(base_url=small_queue_server, timeout=60) as http:
        with http.stream("POST", "/v1/completions", json=body) as held:
            assert held.status_code == 200
            lines = held.iter_lines()  # keep the iterator: dropping it closes the connection
            assert next(lines).startswith("data: ")
            with pytest.raises(openai.RateLimitError) as exc:
                client.completions.create(model="small", prompt="hi", max_tokens=2)
            assert exc.value.body["code"] == "queue_full" and exc.value.response.headers["retry-after"] == "1"
            raw = http.post("/v1/chat/completions", json={"model": "small", "messages": MESSAGES, "max_tokens": 2})
            assert raw.status_code == 429 and _error(raw)["type"] == "rate_limit_error"
        deadline = time.monotonic() + 20
        while http.get("/v1/internal/stats").json()["queue_depth"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    out = client.completions.create(model="small", prompt="hi", max_tokens=2)
    assert out.choices[0].finish_reason in ("stop", "length")
