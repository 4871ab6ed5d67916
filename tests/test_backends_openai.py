"""The openai backend against a real HTTP server on 127.0.0.1 that injects 429/5xx, can refuse n>1, and is slow
on demand; plus layer concurrency measured against it."""
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
from lamina.engine.sampling_params import SamplingParams
from lamina.errors import BackendError

MESSAGES = [{"role": "user", "content": "hello there"}]


@dataclass
class StubState:
    script: list[int] = field(default_factory=list)  # statuses to answer before succeeding
    refuse_n: bool = False
    ignore_n: bool = False  # answer one choice whatever n asks, as some servers do
    delay_s: float = 0.0
    requests: list[dict] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


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
                try:
                    time.sleep(st.delay_s)
                    if status != 200:
                        return self._send(status, {"error": {"message": f"injected {status}"}}, {"Retry-After": "0"})
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
    st = stub.reset(refuse_n=True, delay_s=0.2)
    b = backend(stub)

    async def twice():
        try:
            first = await b.complete(MESSAGES, None, SamplingParams(n=3, seed=10))
            before = len(st.requests)
            start = time.perf_counter()
            second = await b.complete(MESSAGES, None, SamplingParams(n=3, seed=10))
            return first, before, second, time.perf_counter() - start
        finally:
            await b.aclose()

    first, before, second, seconds = run(twice())
    assert [c.text for c in first] == [f"seed={10 + i} i=0: hello there" for i in range(3)]
    assert before == 4  # the refused n=3 request, then three n=1 requests
    assert len(st.requests) == 7 and b.supports_n is False  # remembered: no second refusal
    assert [c.text for c in second] == [c.text for c in first]
    assert seconds < 0.5  # the three calls ran in parallel (3 x 0.2 s sequentially)


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
    assert b.usage.calls == 1 and b.usage.prompt_tokens == 3 * words and b.usage.completion_tokens == 12


def test_completions_endpoint_and_logprobs(stub):
    stub.reset()
    out = run(complete_and_close(backend(stub), SamplingParams(seed=1), messages=None, prompt="plain prompt"))
    assert out[0].text == "seed=1 i=0: plain prompt"
    out = run(complete_and_close(backend(stub), SamplingParams(seed=2, logprobs=2)))
    assert out[0].logprobs and out[0].logprobs[0].top == {"seed=2": -0.5, "x": -1.5}
    assert out[0].num_tokens == len(out[0].logprobs)


def test_timeouts_are_retried_then_reported(stub):
    st = stub.reset(delay_s=1.0)
    start = time.perf_counter()
    with pytest.raises(BackendError, match="ReadTimeout after 2 attempts"):
        run(complete_and_close(backend(stub, timeout_s=0.2, max_retries=1), SamplingParams()))
    assert time.perf_counter() - start < 1.5 and len(st.requests) == 2


def test_api_key_from_environment(stub, monkeypatch):
    st = stub.reset()
    monkeypatch.setenv("STUB_KEY", "sk-test")
    run(complete_and_close(backend(stub, api_key_env="STUB_KEY"), SamplingParams()))
    assert st.requests[0]["auth"] == "Bearer sk-test"
    monkeypatch.delenv("STUB_KEY")
    with pytest.raises(BackendError, match="STUB_KEY"):
        run(complete_and_close(backend(stub, api_key_env="STUB_KEY"), SamplingParams()))


def test_first_finish_returns_the_earliest_and_cancels_the_rest(stub):
    stub.reset(delay_s=0.2)
    b = backend(stub)

    async def go():
        try:
            start = time.perf_counter()
            out = await b.first_finish(MESSAGES, None, SamplingParams(n=4, seed=3))
            return out, time.perf_counter() - start
        finally:
            await b.aclose()

    out, seconds = run(go())
    assert len(out) == 1 and out[0].text.startswith("seed=") and seconds < 0.6


def concurrency_spec(stub: StubServer, max_concurrency: int) -> dict:
    alias = {"backend": "openai", "model": "stub-model", "base_url": stub.base_url,
             "max_concurrency": max_concurrency, "params": {"max_tokens": 8}}
    return {"name": "eight", "models": {"stub": alias},
            "layers": [[{"type": "generate", "model": "stub", "name": f"g{i}"} for i in range(8)]]}


def test_a_layer_of_eight_generators_runs_concurrently(stub):
    st = stub.reset(delay_s=0.4)
    arch = Architecture.from_spec(concurrency_spec(stub, 8), cache=False)
    result = run(arch.run(MESSAGES))
    run(arch.aclose())
    calls = [e for e in result.trace if e["event"] == "call"]
    total = sum(e["seconds"] for e in calls)
    ratio = result.seconds / total
    print(f"\n8 generators: wall {result.seconds:.2f}s, sum of calls {total:.2f}s, wall/sum {ratio:.2f}")
    assert len(calls) == 8 and len(result.candidates) == 8 and st.max_in_flight == 8
    assert ratio < 0.35


def test_per_backend_concurrency_limit_is_respected(stub):
    st = stub.reset(delay_s=0.2)
    arch = Architecture.from_spec(concurrency_spec(stub, 2), cache=False)
    result = run(arch.run(MESSAGES))
    run(arch.aclose())
    assert st.max_in_flight == 2 and len(st.requests) == 8
    assert result.seconds >= 4 * 0.2 * 0.9  # four waves of two
