"""Start-up: the model is built without random initialisation and reads each tensor of the file at most once; the
tensors the native linears multiply raw are never dequantized."""
from __future__ import annotations

from collections import Counter

import pytest
import torch

from lamina import LLM, SamplingParams
from lamina.engine.loader import gguf as gguf_loader
from tests.test_loader import byte_vocab, random_hf_weights, write_gguf

# Q8_0 lm_head, Q4_0 o_proj; the Q8_0 embedding table (its rows are dequantized as they are looked up)
NATIVE = {"output.weight", "blk.0.attn_output.weight", "blk.1.attn_output.weight", "token_embd.weight"}


def test_start_up_loads_no_tensor_twice_and_never_a_native_linears(tmp_path, monkeypatch):
    monkeypatch.setenv("LAMINA_LINEAR_CHOICE", "native")
    path = write_gguf(tmp_path / "tiny.gguf", "llama", random_hf_weights(len(byte_vocab()), False, False), permute=True)
    reads: Counter[str] = Counter()
    dequantize = gguf_loader.dequantize

    def counted(file, tensor):
        reads[tensor.name] += 1
        return dequantize(file, tensor)

    monkeypatch.setattr(gguf_loader, "dequantize", counted)
    llm = LLM(str(path), num_kv_blocks=16, block_size=4)
    if llm.engine.kernels is None:
        pytest.skip("native kernels unavailable here")
    stored = set(gguf_loader.GGUFFile.open(path).tensors)
    assert reads and max(reads.values()) == 1, reads
    assert set(reads) == stored - NATIVE
    assert "2 native" in llm.engine.linear_backend or "3 native" in llm.engine.linear_backend
    params = [*llm.engine.model.parameters(), *llm.engine.model.buffers()]
    assert not any(t.is_meta for t in params)
    out = llm.generate("the", SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))[0]
    assert len(out.outputs[0].token_ids) == 4


def test_kv_cache_pool_starts_zeroed():
    from lamina.engine.kv_cache import KVCache

    cache = KVCache(3, 8, 4, 2, 16)
    assert len(cache.k) == len(cache.v) == 3 and cache.k[0].shape == (2, 8, 4, 16)
    assert all(bool((t == 0).all()) for t in (*cache.k, *cache.v))
    cache.k[1][0, 0, 0, 0] = 1.0
    assert float(cache.v[1].abs().sum()) == 0 and float(cache.k[2].abs().sum()) == 0
    assert cache.k[0].dtype == torch.float32


def test_kv_cache_pool_is_in_small_pages():
    """A first write into a huge page zeroes all 2 MiB of it: ~20 ms each, over a second on a first request."""
    from lamina.engine.kv_cache import KVCache

    cache = KVCache(2, 4096, 16, 2, 64)
    address = cache.k[0].data_ptr() + cache.k[0].nbytes // 2  # (numpy madvised from the second page on)
    try:
        smaps = open("/proc/self/smaps").read().split("\n")
    except OSError:
        pytest.skip("no /proc/self/smaps here")
    for i, line in enumerate(smaps):
        fields = line.split()
        if fields and "-" in fields[0] and all(c in "0123456789abcdef-" for c in fields[0]):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if start <= address < end:
                region = smaps[i + 1 : i + 40]
                break
    else:
        pytest.fail("the pool's mapping is not in /proc/self/smaps")
    eligible = [line for line in region if line.startswith("THPeligible:")]
    if not eligible:
        pytest.skip("this kernel does not say whether a mapping may use huge pages")
    assert eligible[0].split()[1] == "0"


def test_building_a_model_imports_no_torch_dynamo():
    """nn.Embedding's normal_() on the meta device imports torch._dynamo: ~1 s of every start-up, once."""
    import subprocess
    import sys

    code = ("import sys, torch\n"
            "from lamina.engine.config import ModelConfig\n"
            "from lamina.engine.models.llama import LlamaForCausalLM\n"
            "config = ModelConfig.from_hf_dict(dict(model_type='llama', vocab_size=300, hidden_size=64,"
            " intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,"
            " max_position_embeddings=64))\n"
            "with torch.device('meta'):\n"
            "    LlamaForCausalLM(config, 64)\n"
            "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_built_kernels_load_without_torchs_extension_builder():
    """Once built, the kernels are imported directly: cpp_extension (and its setuptools) cost ~0.05-0.15 s."""
    import subprocess
    import sys

    from torch.utils import cpp_extension

    from lamina.engine import kernels

    if kernels.native_kernels() is None:
        pytest.skip("native kernels unavailable here")
    name = kernels.native_kernels().__name__
    assert str(kernels._build_root() / name) == cpp_extension._get_build_directory(name, verbose=False)
    code = ("import sys\nfrom lamina.engine.kernels import native_kernels\n"
            "print(native_kernels().__name__, 'torch.utils.cpp_extension' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [name, "False"]


def test_importing_the_engine_runs_no_full_garbage_collection_and_leaves_it_on():
    """Nor are the spared passes left for start-up: the imported objects are already in the oldest generation (had
    the collector merely waited, the first young collection after the import would scan them all), none frozen."""
    import subprocess
    import sys

    code = ("import gc\nruns = []\ngc.callbacks.append(lambda phase, info: runs.append(info['generation']))\n"
            "from lamina import LLM\n"
            "print(runs.count(2), gc.isenabled(), gc.get_freeze_count(), len(gc.get_objects(0)) + len(gc.get_objects(1)),"
            " len(gc.get_objects(2)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    full, enabled, frozen, young, old = out.stdout.split()
    assert (full, enabled, frozen) == ("0", "True", "0")  # no full collection during the import (three before)
    assert int(young) < 10_000 < 100_000 < int(old)


def test_importing_the_engine_keeps_what_the_program_froze_frozen():
    """A program that froze its objects before importing the engine (gc.freeze before forking workers) keeps them
    frozen: the import's freeze-then-unfreeze would release them all."""
    import subprocess
    import sys

    code = ("import gc\nkeep = [[i] for i in range(1000)]\ngc.freeze()\nbefore = gc.get_freeze_count()\n"
            "from lamina import LLM\nprint(before > 1000, gc.get_freeze_count() > before // 2, gc.isenabled())\n")  # frozen objects freed since still leave it
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "True"]
