"""The openai backend against a real HTTP server on 127.0.0.1 that injects 429/5xx, can refuse n>1 or a field, is
slow on demand and can hold requests until enough are in flight; plus layer concurrency counted at it."""
from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lamina.architecture import Architecture
from lamina.backends import get_backend
from lamina.engine.sampling_params import SAMPLING_FIELDS, SamplingParams
from lamina.errors import BackendError

MESSAGES = [{"role": "user", "content": "hello there"}]


@dataclass
class StubState:
    script: list[int] = field(default_factory=list)  # statuses to answer before succeeding
    refuse_n: bool = False
    ignore_n: bool = False  # answer one choice whatever n asks, as some servers do
    delay_s: float = 0.0
    reject: str | None = None  # answer 400 naming this field when a request sends it
    reject_style: str = "param"  # name it in the error's `param` (OpenAI), or only in its message, "quoted" or "bare"
    hold_until: int = 0  # hold each request until this many have arrived (then release them together)
    fast_seed: int | None = None  # answer the request with this seed at once; hold the others until `release`
    release: threading.Event = field(default_factory=threading.Event)
    requests: list[dict] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    held: int = 0
    waves: int = 0
    lock: threading.Condition = field(default_factory=threading.Condition)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # the default backlog of 5 stalls a burst of 8 connects by a SYN retry


class StubServer:
    """A small OpenAI-compatible server: replies 'seed=S i=I: <prompt>' so tests can see which sample is which."""

    def __init__(self) -> None:
        self.state = StubState()
        self.httpd = _Server(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def reset(self, **changes) -> StubState:
        self.state = StubState(**changes)
        return self.state

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                return None

            def do_POST(self) -> None:
                st = server.state
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with st.lock:
                    st.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                    status = st.script.pop(0) if st.script else 200
                    st.in_flight += 1
                    st.max_in_flight = max(st.max_in_flight, st.in_flight)
                    if st.hold_until:  # arrivals are held, then released in groups of hold_until
                        wave, st.held = st.waves, st.held + 1
                        if st.held == st.hold_until:
                            st.waves, st.held = st.waves + 1, 0
                            st.lock.notify_all()
                        else:
                            st.lock.wait_for(lambda: st.waves > wave, timeout=60)
                try:
                    if st.fast_seed is not None and body.get("seed") != st.fast_seed:
                        st.release.wait(timeout=60)  # long: a loaded machine must not release them early
                    time.sleep(st.delay_s)
                    if status != 200:
                        return self._send(status, {"error": {"message": f"injected {status}"}}, {"Retry-After": "0"})
                    if st.reject in body:
                        return self._send(400, {"error": rejection(st.reject, st.reject_style)})
                    if st.refuse_n and body.get("n", 1) > 1:
                        return self._send(400, {"error": {"message": "n > 1 is not supported", "param": "n"}})
                    if st.ignore_n:
                        body = {**body, "n": 1}
                    self._send(200, reply(body, self.path.endswith("/chat/completions")))
                finally:
                    with st.lock:
                        st.in_flight -= 1

            def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout, first_finish)
                    pass

        return Handler


def rejection(name: str, style: str) -> dict:
    if style == "bare":  # as a pydantic-validating server words it
        return {"message": f"1 validation error for Request\n{name}\n  Extra inputs are not permitted", "param": None}
    if style == "param":
        return {"message": "This parameter is not supported with this model.", "param": name}
    return {"message": f"Unsupported parameter: '{name}' is not supported with this model.", "param": None}


def reply(body: dict, chat: bool) -> dict:
    prompt = body["messages"][-1]["content"] if chat else body["prompt"]
    choices = []
    for i in range(body.get("n", 1)):
        text = f"seed={body.get('seed')} i={i}: {prompt}"
        choice = {"index": i, "finish_reason": "stop"}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
            if body.get("logprobs"):
                k = body.get("top_logprobs") or 0
                choice["logprobs"] = {"content": [
                    {"token": w, "logprob": -0.5, "top_logprobs": [{"token": w, "logprob": -0.5},
                                                                   {"token": "x", "logprob": -1.5}][:k]}
                    for w in text.split()]}
        else:
            choice["text"] = text
        choices.append(choice)
    return {"choices": choices, "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": 4 * len(choices)}}


@pytest.fixture(scope="module")
def stub() -> Iterator[StubServer]:
    server = StubServer()
    yield server
    server.close()


def backend(stub: StubServer, **opts):
    return get_backend("openai", "stub-model", base_url=stub.base_url, backoff_s=0.01, **opts)


def run(coro):
    return asyncio.run(coro)


async def complete_and_close(b, params, messages=MESSAGES, prompt=None):
    try:
        return await b.complete(messages, prompt, params)
    finally:
        await b.aclose()


def test_retries_429_and_5xx_then_succeeds(stub):
    st = stub.reset(script=[429, 500, 503])
    b = backend(stub, max_retries=4)
    out = run(complete_and_close(b, SamplingParams(seed=7, max_tokens=8)))
    assert [c.text for c in out] == ["seed=7 i=0: hello there"]
    assert len(st.requests) == 4
    assert b.usage.calls == 1 and out.prompt_tokens == 2 and out.completion_tokens == 4


def test_gives_up_after_max_retries_with_a_clear_error(stub):
    st = stub.reset(script=[500] * 10)
    with pytest.raises(BackendError, match=r"HTTP 500 on /chat/completions after 3 attempt\(s\)"):
        run(complete_and_close(backend(stub, max_retries=2), SamplingParams()))
    assert len(st.requests) == 3


def test_client_errors_are_not_retried(stub):
    st = stub.reset(script=[404])
    with pytest.raises(BackendError, match="HTTP 404"):
        run(complete_and_close(backend(stub), SamplingParams()))
    assert len(st.requests) == 1


def test_n_is_sent_in_one_request_when_supported(stub):
    st = stub.reset()
    out = run(complete_and_close(backend(stub), SamplingParams(n=3, seed=5)))
    assert [c.text for c in out] == [f"seed=5 i={i}: hello there" for i in range(3)]
    assert len(st.requests) == 1 and st.requests[0]["body"]["n"] == 3


def test_n_is_emulated_by_parallel_calls_when_refused(stub):
    st = stub.reset(refuse_n=True)
    b = backend(stub)

    async def twice():
        try:
            first = await b.complete(MESSAGES, None, SamplingParams(n=3, seed=10))
            before = len(st.requests)
            with st.lock:
                st.hold_until, st.max_in_flight = 3, 0  # the server answers once all three are in flight
            second = await b.complete(MESSAGES, None, SamplingParams(n=3, seed=10))
            return first, before, second
        finally:
            await b.aclose()

    first, before, second = run(twice())
    assert [c.text for c in first] == [f"seed={10 + i} i=0: hello there" for i in range(3)]
    assert before == 4  # the refused n=3 request, then three n=1 requests
    assert len(st.requests) == 7 and b.supports_n is False  # remembered: no second refusal
    assert (first.requests, second.requests, b.usage.calls) == (4, 3, 7)  # every request made is a call
    assert [c.text for c in second] == [c.text for c in first]
    assert st.max_in_flight == 3  # the three calls were sent in parallel


def test_a_server_that_ignores_n_keeps_its_answer_counted_and_is_asked_only_for_the_rest(stub):
    st = stub.reset(ignore_n=True)
    b = backend(stub)

    async def go():
        try:
            return await b.complete(MESSAGES, None, SamplingParams(n=3, seed=7))
        finally:
            await b.aclose()

    out = run(go())
    assert len(out) == 3 and len(st.requests) == 3  # the n=3 request (1 choice kept) + 2 single requests
    assert [r["body"]["n"] for r in st.requests] == [3, 1, 1]
    assert sorted(r["body"].get("seed") for r in st.requests[1:]) == [8, 9]  # sent concurrently: any order
    assert b.supports_n is False
    words = len(MESSAGES[-1]["content"].split())  # the stub counts a prompt token per word, 4 per completion
    assert out.prompt_tokens == 3 * words and out.completion_tokens == 3 * 4  # all three requests are counted
    assert out.requests == 3  # every request made is a call
    assert b.usage.calls == 3 and b.usage.prompt_tokens == 3 * words and b.usage.completion_tokens == 12


def test_an_architecture_counts_every_request_as_a_call_live_and_replayed(stub, tmp_path):
    st = stub.reset(ignore_n=True)
    alias = {"backend": "openai", "model": "stub-model", "base_url": stub.base_url, "params": {"max_tokens": 8}}
    spec = {"name": "n3", "models": {"stub": alias}, "layers": [[{"type": "generate", "model": "stub", "samples": 3}]]}

    async def go():
        arch = Architecture.from_spec(spec, cache=tmp_path / "calls.sqlite")
        try:
            return await arch.run("hi", seed=1), await arch.run("hi", seed=1)
        finally:
            await arch.aclose()

    live, replay = run(go())
    assert len(st.requests) == 3  # one n=3 request answered with one choice, then two single requests
    assert (live.usage.calls, live.usage.cached_calls) == (3, 0)
    assert (replay.usage.calls, replay.usage.cached_calls) == (0, 3)  # the replay costs the same three calls
    assert replay.usage.total_tokens == live.usage.total_tokens and replay.usage.spent_tokens == 0


def test_completions_endpoint_and_logprobs(stub):
    stub.reset()
    out = run(complete_and_close(backend(stub), SamplingParams(seed=1), messages=None, prompt="plain prompt"))
    assert out[0].text == "seed=1 i=0: plain prompt"
    out = run(complete_and_close(backend(stub), SamplingParams(seed=2, logprobs=2)))
    assert out[0].logprobs and out[0].logprobs[0].top == {"seed=2": -0.5, "x": -1.5}
    assert out[0].num_tokens == len(out[0].logprobs)


def test_timeouts_are_retried_then_reported(stub):
    st = stub.reset(delay_s=1.0)
    with pytest.raises(BackendError, match="ReadTimeout after 2 attempts"):
        run(complete_and_close(backend(stub, timeout_s=0.2, max_retries=1), SamplingParams()))
    assert len(st.requests) == 2


def test_api_key_from_environment(stub, monkeypatch):
    st = stub.reset()
    monkeypatch.setenv("STUB_KEY", "sk-test")
    run(complete_and_close(backend(stub, api_key_env="STUB_KEY"), SamplingParams()))
    assert st.requests[0]["auth"] == "Bearer sk-test"
    monkeypatch.delenv("STUB_KEY")
    with pytest.raises(BackendError, match="STUB_KEY"):
        run(complete_and_close(backend(stub, api_key_env="STUB_KEY"), SamplingParams()))


def test_first_finish_returns_the_earliest_without_waiting_for_the_rest(stub):
    # samples get seeds 3, 4, 5, 6: once all four are in flight the third is answered; the others are held
    st = stub.reset(fast_seed=5, hold_until=4)
    b = backend(stub)

    async def go():
        try:
            out = await b.first_finish(MESSAGES, None, SamplingParams(n=4, seed=3))
            with st.lock:
                still_held = st.in_flight
            return out, still_held
        finally:
            st.release.set()
            await b.aclose()

    out, still_held = run(go())
    assert [c.text for c in out] == ["seed=5 i=0: hello there"]
    assert sorted(r["body"]["seed"] for r in st.requests) == [3, 4, 5, 6] and still_held == 3
    assert out.requests == 4 and b.usage.calls == 4  # the cancelled requests were made: they are calls


def concurrency_spec(stub: StubServer, max_concurrency: int) -> dict:
    alias = {"backend": "openai", "model": "stub-model", "base_url": stub.base_url,
             "max_concurrency": max_concurrency, "params": {"max_tokens": 8}}
    return {"name": "eight", "models": {"stub": alias},
            "layers": [[{"type": "generate", "model": "stub", "name": f"g{i}"} for i in range(8)]]}


def test_a_layer_of_eight_generators_runs_concurrently(stub):
    st = stub.reset(hold_until=8)  # the server answers once all eight calls are in flight
    arch = Architecture.from_spec(concurrency_spec(stub, 8), cache=False)
    result = run(arch.run(MESSAGES))
    run(arch.aclose())
    calls = [e for e in result.trace if e["event"] == "call"]
    assert len(calls) == 8 and len(result.candidates) == 8
    assert st.max_in_flight == 8 and st.waves == 1


def test_per_backend_concurrency_limit_is_respected(stub):
    st = stub.reset(hold_until=2, delay_s=0.05)  # answered in pairs, so that two calls are surely in flight at once
    arch = Architecture.from_spec(concurrency_spec(stub, 2), cache=False)
    run(arch.run(MESSAGES))
    run(arch.aclose())
    assert st.max_in_flight == 2 and len(st.requests) == 8


# A value other than the default for every SamplingParams field (a new field must be added here to be tested).
CHANGED = {"n": 2, "temperature": 0.3, "top_p": 0.9, "top_k": 5, "min_p": 0.05, "repetition_penalty": 1.2,
           "seed": 9, "max_tokens": 7, "stop": ["###"], "stop_token_ids": [2, 7], "ignore_eos": True, "logprobs": 3,
           "include_stop_str_in_output": True, "prompt_logprobs": 2, "structured_outputs": {"regex": "a+"},
           "num_speculative_tokens": 3, "prompt_lookup_max": 5, "prompt_lookup_min": 1}
OPENAI_KEYS = {"model", "n", "temperature", "top_p", "max_tokens"}


def test_every_sampling_field_has_a_changed_value_here():
    assert set(CHANGED) == set(SAMPLING_FIELDS)
    assert all(CHANGED[name] != info.default for name, info in SAMPLING_FIELDS.items())


@pytest.mark.parametrize("name", sorted(CHANGED))
@pytest.mark.parametrize("chat", [True, False], ids=["chat", "completions"])
def test_each_sampling_field_reaches_the_server(stub, name, chat):
    st = stub.reset()
    messages, prompt = (MESSAGES, None) if chat else (None, "plain prompt")
    run(complete_and_close(backend(stub), SamplingParams(**{name: CHANGED[name]}), messages, prompt))
    body = st.requests[0]["body"]
    sent_as = {name}
    if name == "logprobs" and chat:  # OpenAI's chat shape
        assert body["logprobs"] is True and body["top_logprobs"] == CHANGED["logprobs"]
        sent_as = {"logprobs", "top_logprobs"}
    elif name == "structured_outputs":  # vLLM's guided_regex (JSON goes as OpenAI's response_format)
        assert body["guided_regex"] == "a+"
        sent_as = {"guided_regex"}
    else:
        assert body[name] == CHANGED[name]
    extra = set(body) - OPENAI_KEYS - {"messages", "prompt"}
    assert extra == sent_as - OPENAI_KEYS


def test_default_params_send_only_openai_keys(stub):
    st = stub.reset()
    run(complete_and_close(backend(stub), SamplingParams()))
    assert set(st.requests[0]["body"]) == OPENAI_KEYS | {"messages"}


@pytest.mark.parametrize("style", ["param", "quoted", "bare"])
def test_a_rejected_field_is_named_with_the_server(stub, style):
    st = stub.reset(reject="top_k", reject_style=style)
    with pytest.raises(BackendError) as info:
        run(complete_and_close(backend(stub), SamplingParams(top_k=5, min_p=0.1, max_tokens=4)))
    assert str(info.value).startswith(f"backend openai:{stub.base_url}:stub-model: the server rejected field 'top_k' "
                                      f"(HTTP 400: {rejection('top_k', style)['message'][:20]}")
    assert len(st.requests) == 1  # not retried
