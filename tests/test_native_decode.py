"""The native decode step (kernels/decode.cpp, models/native_decode.py): all layers of a decode-only step in one C++
call. Its hidden states are bitwise the Python forward's on the same batch (plain decodes, a batch of samples,
speculative draft rows), on block-quantized, oneDNN-packed and biased linears; engines with and without it generate
the same greedy tokens with the same logprobs and the same seeded samples, alone or in a batch; models it does not
run fall back to the Python path and say why."""
from __future__ import annotations

import pytest
import torch

from lamina import LLM, SamplingParams
from lamina.engine.models import native_decode as nd
from tests.conftest import assert_pool_full
from tests.test_loader import byte_vocab, random_hf_weights, write_gguf
from tests.test_native_kernels import _block_typed, engine_kernel, kernel  # noqa: F401 (fixtures)


class CheckedStep:
    """Runs the native step and then the Python forward on the same batch; asserts equal hidden states (the K/V
    written twice are the same values at the same slots)."""

    def __init__(self, llm: LLM) -> None:
        self.inner, self.model, self.rows = llm.engine.runner.native_step, llm.engine.model, []

    def step(self, input_ids, positions, meta):
        native = self.inner.step(input_ids, positions, meta)
        python = self.model(input_ids, positions, meta)
        assert torch.equal(native, python), f"max diff {(native - python).abs().max().item()} over {len(input_ids)} rows"
        self.rows.append(len(input_ids))
        return native


def _gguf(tmp_path, arch: str = "llama", bias: bool = False):
    weights = random_hf_weights(len(byte_vocab()), arch == "qwen2", bias)
    return str(write_gguf(tmp_path / f"{arch}.gguf", arch, weights, permute=arch == "llama", types=_block_typed))


def _run_everything(llm: LLM) -> None:
    greedy = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    llm.generate(["the the", "he the t", "t"], greedy)
    llm.generate(["the the"], SamplingParams(n=4, temperature=1.0, seed=3, max_tokens=8, ignore_eos=True))
    llm.generate(["the the the the the the"], greedy.replace(num_speculative_tokens=3))


@pytest.mark.parametrize("arch, bias, choice", [("llama", False, "native"), ("qwen2", True, "native"),
                                                 ("llama", False, "onednn")])
def test_native_step_equals_the_python_forward_bitwise(engine_kernel, tmp_path, monkeypatch, arch, bias, choice):
    monkeypatch.setenv("LAMINA_LINEAR_CHOICE", choice)
    llm = LLM(_gguf(tmp_path, arch, bias), num_kv_blocks=64, block_size=4)
    assert llm.engine.runner.decode_path == "decode step: native (all layers in one call)"
    checked = CheckedStep(llm)
    llm.engine.runner.native_step = checked
    _run_everything(llm)
    assert len(checked.rows) > 20 and max(checked.rows) > 1  # single rows, batches and draft rows all went native
    assert_pool_full(llm)


def test_native_step_runs_dense_fp32_linears(engine_kernel, tmp_path, monkeypatch):
    monkeypatch.setenv("LAMINA_LINEAR_CHOICE", "onednn")
    llm = LLM(_gguf(tmp_path), num_kv_blocks=64, block_size=4, pack_weights=False)
    assert llm.engine.linear_backend == "linears: 9 fp32 torch"
    checked = CheckedStep(llm)
    llm.engine.runner.native_step = checked
    _run_everything(llm)
    assert checked.rows


def test_engines_with_and_without_the_native_step_generate_the_same(engine_kernel, tmp_path, monkeypatch):
    path = _gguf(tmp_path)
    native = LLM(path, num_kv_blocks=64, block_size=4)
    monkeypatch.setenv("LAMINA_NATIVE_DECODE", "0")
    python = LLM(path, num_kv_blocks=64, block_size=4)
    assert python.engine.runner.native_step is None
    assert python.engine.runner.decode_path == "decode step: Python (LAMINA_NATIVE_DECODE=0)"
    greedy = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, logprobs=3)
    for a, b in zip(native.generate(["the the", "he the t"], greedy), python.generate(["the the", "he the t"], greedy)):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        assert [x.logprob for x in a.outputs[0].logprobs] == [y.logprob for y in b.outputs[0].logprobs]
    seeded = SamplingParams(n=4, temperature=1.0, seed=3, max_tokens=10, ignore_eos=True)
    alone = native.generate(["the the"], seeded)[0]
    crowded = native.generate(["he the t", "the the", "t he"], seeded)[1]
    reference = python.generate(["the the"], seeded)[0]
    assert [c.token_ids for c in alone.outputs] == [c.token_ids for c in crowded.outputs]
    assert [c.token_ids for c in alone.outputs] == [c.token_ids for c in reference.outputs]


def test_falls_back_to_python_and_says_why(tmp_path, monkeypatch):
    path = _gguf(tmp_path)
    torch_only = LLM(path, num_kv_blocks=64, block_size=4, native_kernels=False)
    assert torch_only.engine.runner.native_step is None
    assert torch_only.engine.runner.decode_path == "decode step: Python (no native kernels)"
    monkeypatch.setenv("LAMINA_NATIVE_DECODE", "yes")
    with pytest.raises(ValueError, match="LAMINA_NATIVE_DECODE='yes'"):
        LLM(path, num_kv_blocks=64, block_size=4)


def test_gemma3_keeps_the_python_path(kernel, monkeypatch):
    monkeypatch.setenv("LAMINA_KERNEL_ISA", kernel.isa)
    from lamina.engine.models.gemma3 import Gemma3ForCausalLM

    assert nd.unsupported_reason(Gemma3ForCausalLM.__new__(Gemma3ForCausalLM), kernel) == \
        "Gemma3ForCausalLM is not the plain Llama family"


def test_native_step_rejects_bad_input(engine_kernel, tmp_path):
    llm = LLM(_gguf(tmp_path), num_kv_blocks=64, block_size=4)
    impl, cache = llm.engine.runner.native_step.impl, llm.engine.cache
    x, one = torch.zeros(1, 64), torch.zeros(1, dtype=torch.long)
    with pytest.raises(RuntimeError, match="one cache per layer"):
        impl.forward(x, one, cache.k[:1], cache.v[:1], one, one.view(1, 1), one + 1)
    with pytest.raises(RuntimeError, match="cache slot out of range"):
        impl.forward(x, one, cache.k, cache.v, one + 10**6, one.view(1, 1), one + 1)
    with pytest.raises(ValueError, match="decode rows only"):
        llm.engine.runner.native_step.step(one, one, _prefill_meta(cache))


def _prefill_meta(cache):
    from lamina.engine.models.attention import AttentionMetadata, PrefillSegment

    return AttentionMetadata(cache.k, cache.v, torch.zeros(1, dtype=torch.long), prefills=[PrefillSegment(0, 1, 1, None)])


@pytest.mark.slow
def test_real_model_native_step_equals_python_path():
    llm = LLM("default", kv_cache_memory_gb=0.25)
    assert llm.engine.runner.decode_path == "decode step: native (all layers in one call)"
    checked = CheckedStep(llm)
    llm.engine.runner.native_step = checked
    prompt = llm.tokenizer.encode_prompt(llm.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Name three colours."}]))
    greedy = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, logprobs=2)
    native = llm.generate(prompt, greedy)[0].outputs[0]
    sampled = llm.generate(prompt, SamplingParams(n=3, temperature=0.8, top_p=0.95, seed=5, max_tokens=8))[0]
    assert len(checked.rows) >= 15 and 3 in checked.rows
    llm.engine.runner.native_step = None
    python = llm.generate(prompt, greedy)[0].outputs[0]
    assert native.token_ids == python.token_ids
    assert [x.logprob for x in native.logprobs] == [y.logprob for y in python.logprobs]
    again = llm.generate(prompt, SamplingParams(n=3, temperature=0.8, top_p=0.95, seed=5, max_tokens=8))[0]
    assert [c.token_ids for c in sampled.outputs] == [c.token_ids for c in again.outputs]
