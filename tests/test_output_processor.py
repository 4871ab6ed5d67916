"""The postprocess verb without a model: stop strings (earliest wins), held-back text, deltas, EngineConfig checks."""
from __future__ import annotations

import pytest
import torch

from lamina.engine.config import EngineConfig
from lamina.engine.output_processor import OutputProcessor, find_stop
from lamina.engine.outputs import DeltaJoiner, OutputKind
from lamina.engine.request import Request
from lamina.engine.sampler import SampleResult
from lamina.engine.sampling_params import SamplingParams
from lamina.engine.sequence import Sequence, SequenceStatus
from lamina.errors import InvalidRequestError

PIECES = {1: " hello", 2: "ab", 3: "cS", 4: "TO", 5: "P!", 6: "x", 7: "\u00e9"}


class _Detokenizer:
    def add(self, token: int) -> str:
        return PIECES[token]

    def flush(self) -> str:
        return ""


class _Tokenizer:
    def id_to_token(self, token_id: int) -> str:
        return PIECES[token_id]


class _Scheduler:
    def finish(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.FINISHED


def _run(tokens: list[int], params: SamplingParams, kind: OutputKind = OutputKind.DELTA) -> list:
    """Feed `tokens` one step at a time to a one-sample request; the RequestOutputs of each step."""
    processor = OutputProcessor(_Tokenizer(), _Scheduler(), eos_token_ids={0}, max_seq_len=100)  # type: ignore[arg-type]
    request = Request("r", "p", [9, 9], params, kind)
    seq = Sequence("r", 0, [9, 9], 2, params, torch.Generator(), detokenizer=_Detokenizer(),  # type: ignore[arg-type]
                   logprobs=None if params.logprobs is None else [])
    seq.status = SequenceStatus.RUNNING
    request.seqs.append(seq)
    requests = {"r": request}
    steps = []
    for token in tokens:
        steps.append(processor.process([seq], SampleResult([token], [-0.5]), requests))
        if not requests:
            break
    return steps


def _joined(steps: list) -> tuple[str, list[int], str | None]:
    joiner = DeltaJoiner()
    for outs in steps:
        for out in outs:
            for o in out.outputs:
                joiner.add(o)
    (o,) = joiner.outputs()
    return o.text, o.token_ids, o.finish_reason


@pytest.mark.parametrize("stops", [["lo", "ell"], ["ell", "lo"]])
def test_earliest_stop_string_wins_whatever_the_order(stops):
    steps = _run([1], SamplingParams(max_tokens=1, stop=stops))
    (out,) = steps[0][0].outputs
    assert (out.text, out.finish_reason, out.stop_reason) == (" h", "stop", "ell")
    kept = _run([1], SamplingParams(max_tokens=1, stop=stops, include_stop_str_in_output=True))
    assert kept[0][0].outputs[0].text == " hell"


def test_find_stop_prefers_earliest_start_then_the_shorter():
    assert find_stop("xxabcd", 4, ["cd", "bc", "abc"]) == (2, "abc")
    assert find_stop("xxabcd", 4, ["abcd", "abc"]) == (2, "abc")
    assert find_stop("xxabcd", 1, ["ab", "cd"]) == (4, "cd")  # "ab" ended before the new character
    assert find_stop("xxabcd", 4, ["zz"]) is None


def test_deltas_hold_back_a_possible_stop_string_and_never_stream_it():
    steps = _run([2, 3, 4, 5], SamplingParams(max_tokens=10, stop=["STOP"]))
    texts = [out.outputs[0].text for (out,) in steps]
    assert texts == ["", "a", "bc", ""]  # text is "ab", "abcS", "abcSTO", then cut at "STOP"
    assert _joined(steps) == ("abc", [2, 3, 4, 5], "stop")
    assert [len(out.outputs[0].token_ids) for (out,) in steps] == [1, 1, 1, 1]


def test_held_back_text_is_released_when_the_sample_ends_otherwise():
    steps = _run([2, 3], SamplingParams(max_tokens=2, stop=["STOP"]))
    assert [out.outputs[0].text for (out,) in steps] == ["", "abcS"]
    assert _joined(steps) == ("abcS", [2, 3], "length")


def test_cumulative_and_final_only_agree_with_the_joined_deltas():
    params = SamplingParams(max_tokens=10, stop=["STOP"], logprobs=0)
    deltas = _run([6, 7, 2, 3, 4, 5], params)
    cumulative = _run([6, 7, 2, 3, 4, 5], params, OutputKind.CUMULATIVE)
    final = _run([6, 7, 2, 3, 4, 5], params, OutputKind.FINAL_ONLY)
    assert [len(s) for s in final] == [0] * 5 + [1]
    last = cumulative[-1][0].outputs[0]
    assert final[-1][0].outputs[0] == last
    assert _joined(deltas) == (last.text, last.token_ids, last.finish_reason) == ("x\u00e9abc", [6, 7, 2, 3, 4, 5], "stop")
    assert [lp.token_id for (out,) in deltas for lp in out.outputs[0].logprobs] == last.token_ids


@pytest.mark.parametrize("options, message", [
    (dict(kv_blocks=3), "unknown engine option(s) kv_blocks; known: block_size"),
    (dict(quantization="int4"), "engine option quantization='int4': expected one of"),
    (dict(dtype="float31"), "engine option dtype='float31': expected a torch dtype name"),
    (dict(device="gpu0"), "engine option device='gpu0': expected a torch device"),
    (dict(block_size=0), "engine option block_size=0: expected an integer >= 1"),
    (dict(num_kv_blocks=2.5), "engine option num_kv_blocks=2.5: expected an integer >= 1"),
    (dict(kv_cache_memory_gb=-1), "engine option kv_cache_memory_gb=-1: expected a number > 0"),
    (dict(quantization="int8", device="meta"), "quantization='int8' runs on the CPU only"),
    (dict(quantization="bf16", device="meta"), "quantization='bf16' runs on the CPU only"),
    (dict(quantization="fp16"), "engine option quantization='fp16': expected one of (None, 'int8', 'bf16')"),
])
def test_engine_config_names_the_bad_option(options, message):
    with pytest.raises(InvalidRequestError) as exc:
        EngineConfig.from_options(options)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_engine_config_accepts_the_defaults_and_valid_options():
    cfg = EngineConfig.from_options(dict(num_kv_blocks=16, dtype="bfloat16", quantization="int8"))
    assert (cfg.num_kv_blocks, cfg.torch_dtype, cfg.block_size) == (16, torch.bfloat16, 16)
