"""The server's pure parts, no model: Prometheus text, request validation, SSE delta tracking, admission."""
from __future__ import annotations

import json

import pytest
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from lamina.engine.outputs import CompletionOutput, TokenLogprob
from lamina.server.admission import Admission
from lamina.server.errors import APIError, _validation_error
from lamina.server.formats import ChatFormat, TextFormat, TextOffsets
from lamina.server.metrics import Counter, Histogram, Metrics
from lamina.server.protocol import ChatCompletionRequest, CompletionRequest
from lamina.server.responses import Call, _ChoiceState, _deltas
from lamina.server.targets import Generation

MSG = [{"role": "user", "content": "hi"}]


def test_histogram_buckets_are_cumulative():
    h = Histogram("lat", "latency", buckets=(0.1, 1.0))
    for v in (0.05, 0.5, 0.7, 5.0):
        h.observe(v, model="m")
    lines = h.render()
    assert 'lat_bucket{model="m",le="0.1"} 1' in lines
    assert 'lat_bucket{model="m",le="1"} 3' in lines
    assert 'lat_bucket{model="m",le="+Inf"} 4' in lines
    assert 'lat_count{model="m"} 4' in lines and 'lat_sum{model="m"} 6.25' in lines


def test_counter_escapes_label_values():
    c = Counter("reqs", "requests")
    c.inc(model='a"b\\c')
    c.inc(2, model='a"b\\c')
    assert c.render()[-1] == 'reqs{model="a\\"b\\\\c"} 3'


def test_metrics_gauges_read_live_state():
    engines = {"m": {"num_total_blocks": 10, "num_free_blocks": 7, "num_running": 2, "num_waiting": 1}}
    depth = [3]
    text = Metrics(lambda: engines, lambda: depth[0], 8).render()
    assert 'lamina_kv_blocks_in_use{model="m"} 3' in text and "lamina_queue_depth 3" in text
    assert "lamina_queue_capacity 8" in text and text.endswith("\n")
    depth[0] = 0
    assert "lamina_queue_depth 0" in Metrics(lambda: engines, lambda: depth[0], 8).render()


def test_chat_request_maps_to_sampling_params():
    req = ChatCompletionRequest(model="m", messages=MSG, max_tokens=50, max_completion_tokens=7, stop="###",
                                logprobs=True, top_logprobs=2, n=3, seed=4, temperature=0.5)
    params = req.sampling_params(default_max_tokens=100)
    assert (params.max_tokens, params.stop, params.logprobs, params.n, params.seed, params.temperature) == \
        (7, ["###"], 2, 3, 4, 0.5)
    assert ChatCompletionRequest(model="m", messages=MSG).sampling_params(100).max_tokens == 100


def test_request_errors_name_the_parameter():
    with pytest.raises(APIError) as exc:
        ChatCompletionRequest(model="m", messages=MSG, top_logprobs=2).sampling_params(10)
    assert exc.value.status == 400 and exc.value.param == "top_logprobs"
    with pytest.raises(ValidationError) as invalid:  # SamplingParams' allowed values, checked by the request model
        ChatCompletionRequest(model="m", messages=MSG, top_k=0)
    error = _validation_error(RequestValidationError(invalid.value.errors()))
    assert error.param == "top_k" and error.message == "top_k=0: expected -1 (off) or an integer >= 1"
    with pytest.raises(APIError) as exc:
        ChatCompletionRequest(model="m", messages=MSG, echo=True).check_supported()
    assert exc.value.param == "echo"
    with pytest.raises(APIError) as exc:
        CompletionRequest(model="m", prompt="x", max_tokens=0).check_supported()
    assert exc.value.param == "max_tokens"


@pytest.mark.parametrize("body, want", [
    (dict(echo=True, logprobs=3, max_tokens=0), (3, 3, 0)),  # lm-evaluation-harness / vLLM scoring
    (dict(echo=True, logprobs=1, max_tokens=1), (1, 1, 1)),
    (dict(echo=True, max_tokens=0), (None, 0, 0)),  # the prompt's text only: scored to finish after prefill
    (dict(echo=True, max_tokens=5), (None, None, 5)),
    (dict(logprobs=2, max_tokens=5), (2, None, 5)),
])
def test_echo_sampling_params(body, want):
    request = CompletionRequest(model="m", prompt="x", **body)
    request.check_supported()
    params = request.sampling_params(10)
    assert (params.logprobs, params.prompt_logprobs, params.max_tokens) == want


def test_completion_prompt_shapes():
    assert CompletionRequest(model="m", prompt="a").prompts() == ["a"]
    assert CompletionRequest(model="m", prompt=[1, 2]).prompts() == [[1, 2]]
    assert CompletionRequest(model="m", prompt=["a", "b"]).prompts() == ["a", "b"]
    with pytest.raises(APIError):
        CompletionRequest(model="m", prompt=[]).prompts()


def test_text_parts_are_joined_and_images_rejected():
    req = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": [{"type": "text", "text": "a"},
                                                                                  {"type": "text", "text": "b"}]}])
    assert req.message_dicts() == [{"role": "user", "content": "ab"}]
    req = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": [{"type": "image_url"}]}])
    with pytest.raises(APIError) as exc:
        req.message_dicts()
    assert exc.value.param == "messages.0.content.0.type"


def _gen(*outs: tuple[int, str, str | None]) -> Generation:
    outputs = [CompletionOutput(i, text, [0] * len(text), None, finish) for i, text, finish in outs]
    return Generation(outputs, all(f for _, _, f in outs), 3, sum(len(t) for _, t, _ in outs))


def _events(chunks: list[bytes]) -> list[dict]:
    return [json.loads(c[len(b"data: "):]) for c in chunks]


def test_deltas_cover_late_forked_choices_and_finish_once():
    call = Call("id", "m", "chat", ChatFormat(None), Metrics(dict, lambda: 0, 1))
    states: dict[int, _ChoiceState] = {}
    deltas = [_gen((0, "He", None)), _gen((0, "l", None), (1, "W", None)), _gen((0, "lo", "stop"), (1, "o", None)),
              _gen((1, "", None)), _gen((1, "rld", "length"))]
    events = [e for g in deltas for e in _events(_deltas(call, g, states))]
    text = {0: "", 1: ""}
    finishes: dict[int, list[str]] = {0: [], 1: []}
    for e in events:
        (choice,) = e["choices"]
        text[choice["index"]] += choice["delta"].get("content", "")
        if choice["finish_reason"]:
            finishes[choice["index"]].append(choice["finish_reason"])
    assert text == {0: "Hello", 1: "World"} and finishes == {0: ["stop"], 1: ["length"]}
    firsts = [e["choices"][0]["delta"].get("role") for e in events]
    assert firsts.count("assistant") == 2
    assert len(events) == 6  # the empty delta of choice 1 sends nothing


class _Vocab:
    """Three tokens: "Hel", "lo" and the two halves of "é" (0xC3 0xA9)."""

    pieces = {1: b"Hel", 2: b"lo", 3: b"\xc3", 4: b"\xa9"}

    def id_to_token(self, token_id: int) -> str:
        return self.pieces[token_id].decode("utf-8", "replace")

    def token_bytes(self, token_id: int) -> bytes:
        return self.pieces[token_id]


def _lps(*ids: int) -> list[TokenLogprob]:
    vocab = _Vocab()
    return [TokenLogprob(t, vocab.id_to_token(t), -0.5, {t: -0.5, 2: -2.0}) for t in ids]


def test_text_logprobs_offsets_count_the_characters_before_each_token():
    fmt = TextFormat(_Vocab())
    out = fmt.logprobs(_lps(1, 2))
    assert out == {"tokens": ["Hel", "lo"], "token_logprobs": [-0.5, -0.5],
                   "top_logprobs": [{"Hel": -0.5, "lo": -2.0}, {"lo": -2.0}], "text_offset": [0, 3]}
    offsets = TextOffsets()  # streamed: one chunk per token, a character split over two tokens
    streamed = [fmt.logprobs(_lps(t), offsets)["text_offset"][0] for t in (1, 3, 4, 2)]
    assert streamed == [0, 3, 3, 4] and fmt.logprobs(_lps(1, 3, 4, 2))["text_offset"] == streamed  # "Helélo"


def test_logprob_bytes_are_each_tokens_raw_bytes():
    out = ChatFormat(_Vocab()).logprobs(_lps(1, 3, 4))
    content = out["content"]
    assert [e["bytes"] for e in content] == [list(b"Hel"), [0xC3], [0xA9]]
    assert bytes(b for e in content for b in e["bytes"]).decode() == "Hel\u00e9"
    assert content[1]["top_logprobs"][0] == {"token": "\ufffd", "logprob": -0.5, "bytes": [0xC3]}


def test_admission_bounds_and_releases_once():
    admission = Admission(2)
    a, b = admission.acquire(), admission.acquire()
    with pytest.raises(APIError) as exc:
        admission.acquire()
    assert exc.value.status == 429 and exc.value.body()["error"]["code"] == "queue_full"
    a.release()
    a.release()
    assert admission.depth == 1
    admission.acquire()
    b.release()
    assert admission.depth == 1
