"""The on-disk cache of the native linears' panels (models/panel_cache.py): a cached start-up computes exactly what
a packing one does; wrong, stale or corrupt files are ignored and rewritten; concurrent writers never expose a
partial file."""
from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest
import torch

from lamina import LLM
from lamina.engine.models import panel_cache
from lamina.engine.models.block_quant import BlockQuantLinear, Panels
from lamina.engine.models.panel_cache import CacheError, read_panels, write_panels
from tests.test_loader import byte_vocab, random_hf_weights, write_gguf
from tests.test_model_reference import lamina_logits

PROMPT = [1, 17, 42, 7, 99, 3, 250, 12]


def _native(llm: LLM) -> dict[str, BlockQuantLinear]:
    return {n: m for n, m in llm.engine.model.named_modules() if isinstance(m, BlockQuantLinear)}


def _same_panels(a: LLM, b: LLM) -> None:
    first, second = _native(a), _native(b)
    assert first and first.keys() == second.keys()
    for name in first:
        for buffer in ("codes", "scales", "offsets"):
            x, y = getattr(first[name], buffer), getattr(second[name], buffer)
            assert x.dtype == y.dtype and torch.equal(x, y), (name, buffer)


def _files(folder) -> list:
    return sorted(p for p in folder.iterdir() if p.suffix == ".panels")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "panels"
    monkeypatch.setenv("LAMINA_PANEL_CACHE", str(folder))
    monkeypatch.setenv("LAMINA_LINEAR_CHOICE", "native")
    return folder


@pytest.fixture
def tiny(tmp_path):
    return write_gguf(tmp_path / "tiny.gguf", "llama", random_hf_weights(len(byte_vocab()), False, False), permute=True)


def _start(path, **options) -> LLM:
    llm = LLM(str(path), num_kv_blocks=16, block_size=4, **options)
    if llm.engine.kernels is None:
        pytest.skip("native kernels unavailable here")
    return llm


@pytest.mark.slow
def test_cached_start_up_of_the_real_model_gives_the_logits_of_a_packing_one(cache, monkeypatch):
    cold = _start("default")
    assert cold.engine.panel_cache == "panels: 121 packed, cached" and len(_files(cache)) == 1
    warm = _start("default")
    assert warm.engine.panel_cache == "panels: 121 mapped from the cache"
    monkeypatch.setenv("LAMINA_PANEL_CACHE", "off")
    uncached = _start("default")
    assert uncached.engine.panel_cache == "panels: off"
    _same_panels(warm, uncached)
    expected = lamina_logits(uncached.engine.model, PROMPT)
    assert torch.equal(lamina_logits(warm.engine.model, PROMPT), expected)
    assert torch.equal(lamina_logits(cold.engine.model, PROMPT), expected)


def _flip_a_data_byte(path):
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x01
    path.write_bytes(bytes(data))


def _other_key(path):  # a whole, valid file, made for another GGUF identity (as if copied from elsewhere)
    data = bytearray(path.read_bytes())
    start = data.index(b'"key": "') + len(b'"key": "')
    data[start] = ord("#") if data[start] != ord("#") else ord("%")
    path.write_bytes(bytes(data))


CORRUPTIONS = {
    "a flipped data bit": _flip_a_data_byte,
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:-4096]),
    "empty": lambda p: p.write_bytes(b""),
    "garbage": lambda p: p.write_bytes(os.urandom(10_000)),
    "garbage header": lambda p: p.write_bytes(p.read_bytes()[:40] + b"\xff" * 64 + p.read_bytes()[104:]),
    "another file's": _other_key,
}


@pytest.mark.parametrize("corrupt", list(CORRUPTIONS))
def test_a_bad_cache_file_is_ignored_and_rebuilt(cache, tiny, monkeypatch, capfd, corrupt):
    monkeypatch.setenv("LAMINA_PANEL_CACHE", "off")
    uncached = _start(tiny)
    monkeypatch.setenv("LAMINA_PANEL_CACHE", str(cache))
    assert _start(tiny).engine.panel_cache == "panels: 3 packed, cached"
    (path,) = _files(cache)
    CORRUPTIONS[corrupt](path)
    capfd.readouterr()
    rebuilt = _start(tiny)
    assert rebuilt.engine.panel_cache == "panels: 3 packed, cached"
    assert "ignoring the panel cache" in capfd.readouterr().err
    _same_panels(rebuilt, uncached)
    assert torch.equal(lamina_logits(rebuilt.engine.model, PROMPT), lamina_logits(uncached.engine.model, PROMPT))
    again = _start(tiny)  # the rewritten file is whole again
    assert again.engine.panel_cache == "panels: 3 mapped from the cache" and _files(cache) == [path]
    _same_panels(again, uncached)


def test_an_entry_packed_from_other_tensors_is_repacked(cache, tiny, monkeypatch):
    uncached = _start(tiny)
    (path,) = _files(cache)
    key = next(iter(panel_cache.PanelCache(tiny, uncached.engine.kernels.__name__).entries))
    entries = read_panels(path, _key_of(tiny, uncached))
    parts, panels = entries[key]
    entries[key] = ([[parts[0][0], parts[0][1] + 1, parts[0][2]], *parts[1:]], panels)  # one more row than loaded
    write_panels(path, _key_of(tiny, uncached), entries)
    assert _start(tiny).engine.panel_cache == "panels: 1 packed, cached, 2 mapped from the cache"
    assert _start(tiny).engine.panel_cache == "panels: 3 mapped from the cache"


def _key_of(path, llm: LLM) -> str:
    return panel_cache.PanelCache(path, llm.engine.kernels.__name__).key


def test_a_changed_gguf_file_is_repacked_and_its_old_cache_file_removed(cache, tiny, monkeypatch):
    first = _start(tiny)
    (old,) = _files(cache)
    assert _start(tiny).engine.panel_cache == "panels: 3 mapped from the cache"
    weights = random_hf_weights(len(byte_vocab()), False, False)
    weights["lm_head.weight"] = -weights["lm_head.weight"]
    write_gguf(tiny, "llama", weights, permute=True)  # the same path, new contents
    changed = _start(tiny)
    assert changed.engine.panel_cache == "panels: 3 packed, cached"
    (new,) = _files(cache)
    assert new != old
    assert not torch.equal(_native(changed)["lm_head"].codes, _native(first)["lm_head"].codes)
    monkeypatch.setenv("LAMINA_PANEL_CACHE", "off")
    _same_panels(changed, _start(tiny))


def test_start_up_reads_each_tensor_once_with_the_panels_cached(cache, tiny, monkeypatch):
    from collections import Counter

    from lamina.engine.loader import gguf as gguf_loader

    reads: Counter[str] = Counter()
    dequantize = gguf_loader.dequantize
    monkeypatch.setattr(gguf_loader, "dequantize", lambda f, t: reads.update([t.name]) or dequantize(f, t))
    _start(tiny)
    cold = dict(reads)
    reads.clear()
    assert _start(tiny).engine.panel_cache == "panels: 3 mapped from the cache"
    assert dict(reads) == cold and max(cold.values()) == 1
    assert "output.weight" not in cold  # the native lm_head's blocks are never dequantized


def _panels(seed: int, out_features: int = 40, in_features: int = 64) -> Panels:
    rng = np.random.default_rng(seed)
    groups = -(-out_features // 16)
    return Panels(rng.integers(0, 256, (groups, in_features, 8), dtype=np.uint8),
                  rng.standard_normal((groups, in_features // 32, 16)).astype(np.float32),
                  rng.standard_normal((groups, in_features // 32, 16)).astype(np.float32), out_features, in_features)


def test_panels_written_are_read_back_exactly_and_checked(tmp_path):
    path = tmp_path / "x.panels"
    entries = {"a": ([["Q4_1", 40, 64]], _panels(0)), "b+c": ([["Q4_1", 20, 64], ["Q4_1", 20, 64]], _panels(1))}
    write_panels(path, "key", entries)
    back = read_panels(path, "key")
    assert back.keys() == entries.keys()
    for name, (parts, panels) in entries.items():
        assert back[name][0] == parts
        for array in ("codes", "scales", "offsets"):
            assert np.array_equal(getattr(back[name][1], array), getattr(panels, array))
            assert getattr(back[name][1], array).ctypes.data % panel_cache.ALIGN == 0
    with pytest.raises(CacheError, match="another file"):
        read_panels(path, "other key")
    bad = _panels(2)
    bad.scales = bad.offsets = np.zeros((3, 3, 16), np.float32)  # K = 64 is no multiple of 3 groups
    write_panels(path, "key", {"a": ([["Q4_1", 40, 64]], bad)})
    with pytest.raises(CacheError, match="scales"):
        read_panels(path, "key")
    header = json.loads(path.read_bytes()[24 : 24 + int.from_bytes(path.read_bytes()[8:16], "little")])
    assert header["format"] == panel_cache.FORMAT


def test_concurrent_writers_never_expose_a_partial_file(tmp_path):
    path = tmp_path / "x.panels"
    big = {f"e{i}": ([["Q4_1", 400, 512]], _panels(i, 400, 512)) for i in range(8)}
    write_panels(path, "key", big)
    errors, stop = [], threading.Event()

    def writer():
        for _ in range(10):
            write_panels(path, "key", big)

    def reader():
        while not stop.is_set():
            try:
                read_panels(path, "key")
            except CacheError as exc:
                errors.append(exc)

    readers = [threading.Thread(target=reader) for _ in range(2)]
    writers = [threading.Thread(target=writer) for _ in range(3)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert not errors
    assert [p.name for p in tmp_path.iterdir()] == ["x.panels"]  # no temporary file left behind


@pytest.mark.parametrize("module", ["block_quant.py", "panel_cache.py", "gguf.py", "gguf_reader.py", "quants.py"])
def test_the_key_changes_with_every_module_that_decides_the_panels_bytes(module, monkeypatch):
    """The GGUF reader finds each tensor's bytes (offset, size): a change there must not map panels packed before."""
    from pathlib import Path

    before, read = panel_cache.code_version(), Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: read(self) + (b"\n#" if self.name == module else b""))
    assert panel_cache.code_version() != before


def test_a_cache_folder_that_cannot_be_entered_means_packing_not_a_crash(cache, tiny, monkeypatch, capfd):
    _start(tiny)  # a cache file now exists
    real_exists = panel_cache.Path.exists

    def denied(self, *args, **kwargs):
        if self.suffix == ".panels":
            raise PermissionError(13, "Permission denied", str(self))
        return real_exists(self, *args, **kwargs)

    monkeypatch.setattr(panel_cache.Path, "exists", denied)
    llm = _start(tiny)
    assert llm.engine.panel_cache.startswith("panels: 3 packed")
    assert "cannot read the panel cache folder" in capfd.readouterr().err
