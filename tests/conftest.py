"""Shared fixtures. Append new fixtures below; keep heavy imports inside them."""
from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if "LAMINA_PANEL_CACHE" not in os.environ:  # one panel cache per test session (the tiny GGUFs live in tmp folders)
    os.environ["LAMINA_PANEL_CACHE"] = tempfile.mkdtemp(prefix="lamina-panels-")
    atexit.register(shutil.rmtree, os.environ["LAMINA_PANEL_CACHE"], ignore_errors=True)

# Fixtures that load the real embedded model (its weights, or transformers' copy of it or of its tokenizer): every
# test that uses one, directly or through another fixture, is marked `slow`. Tests that start a real-model server or
# architecture themselves carry the mark in their own file.
REAL_MODEL_FIXTURES = frozenset({"real_loaded_model", "real_llm", "hf_smollm2", "hf_smollm2_tokenizer"})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if REAL_MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


TINY_SIZES = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512)


@pytest.fixture(scope="session")
def real_model_path() -> Path:
    from lamina.engine.loader import resolve_model_path

    return resolve_model_path("default")


@pytest.fixture(scope="session")
def real_loaded_model():
    """The embedded SmolLM2-135M GGUF, loaded once per session (config, weights, tokenizer)."""
    from lamina.engine.loader import load_model

    return load_model("default")


@pytest.fixture(scope="session")
def smollm2_tokenizer_files(tmp_path_factory, real_model_path) -> Path:
    """A folder with the SmolLM2 tokenizer as tokenizer.json + tokenizer_config.json (with its chat template)."""
    from lamina.engine.loader.gguf_reader import GGUFFile
    from lamina.engine.loader.gguf_tokenizer import tokenizer_from_gguf

    tok = tokenizer_from_gguf(GGUFFile.open(real_model_path))
    folder = tmp_path_factory.mktemp("smollm2_tokenizer")
    write_tokenizer(folder, tok)
    return folder


def write_tokenizer(folder: Path, tok) -> None:
    tok.backend.save(str(folder / "tokenizer.json"))
    settings = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": tok.bos_token, "eos_token": tok.eos_token,
                "unk_token": tok.backend.id_to_token(0), "pad_token": tok.eos_token, "add_bos_token": tok.add_bos_token,
                "chat_template": tok.chat_template, "model_max_length": TINY_SIZES["max_position_embeddings"]}
    (folder / "tokenizer_config.json").write_text(json.dumps(settings, indent=1))


def _tiny_model_dir(tmp_path_factory, tokenizer_folder: Path, kind: str) -> Path:
    import shutil

    import torch
    import transformers

    torch.manual_seed(0)
    common = dict(TINY_SIZES, vocab_size=49152, bos_token_id=1, eos_token_id=2, pad_token_id=2, rope_theta=10000.0)
    if kind == "llama":
        config = transformers.LlamaConfig(**common, tie_word_embeddings=False)
        model = transformers.LlamaForCausalLM(config)
    else:
        config = transformers.Qwen2Config(**common, tie_word_embeddings=True)
        model = transformers.Qwen2ForCausalLM(config)
    folder = tmp_path_factory.mktemp(f"tiny_{kind}")
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_folder / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, smollm2_tokenizer_files) -> Path:
    """A randomly initialised 2-layer LlamaForCausalLM (hidden 64, 4 heads, 2 kv heads) saved with the SmolLM2 tokenizer."""
    return _tiny_model_dir(tmp_path_factory, smollm2_tokenizer_files, "llama")


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory, smollm2_tokenizer_files) -> Path:
    """Like tiny_llama_dir, but a Qwen2ForCausalLM (q/k/v biases, tied embeddings)."""
    return _tiny_model_dir(tmp_path_factory, smollm2_tokenizer_files, "qwen2")


@pytest.fixture(scope="session")
def hf_smollm2(real_model_path):
    """transformers' own LlamaForCausalLM loaded from the embedded GGUF: the reference implementation."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers.AutoModelForCausalLM.from_pretrained(
        real_model_path.parent, gguf_file=real_model_path.name, dtype=torch.float32
    ).eval()


@pytest.fixture(scope="session")
def hf_smollm2_tokenizer(real_model_path):
    """transformers' tokenizer read from the embedded GGUF (parsing the GGUF takes transformers seconds)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(real_model_path.parent, gguf_file=real_model_path.name)


@pytest.fixture(scope="session")
def real_llm():
    """Lamina's engine on the embedded model, shared by the tests that need the real model."""
    from lamina import LLM

    return LLM("default", kv_cache_memory_gb=0.25)


@pytest.fixture(scope="session")
def tiny_llm(tiny_llama_dir):
    from lamina import LLM

    return LLM(str(tiny_llama_dir), num_kv_blocks=256, block_size=4)


def assert_pool_full(llm) -> None:
    engine = llm.engine
    assert not engine.has_unfinished_requests()
    assert engine.num_free_blocks == engine.num_total_blocks, "KV blocks leaked"
