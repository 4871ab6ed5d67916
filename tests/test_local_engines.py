"""shared_engine / register_engine: architectures naming one model share its engine only when their engine options
agree with it; otherwise they get their own engine, never a silent reuse."""
from __future__ import annotations

import asyncio

import pytest

from lamina.backends import local
from lamina.backends.local import LocalBackend, register_engine, shared_engine, shutdown_all


@pytest.fixture
def registry(monkeypatch):
    """An empty engine registry for this test; its engines are shut down after it."""
    monkeypatch.setattr(local, "_ENGINES", {})
    monkeypatch.setattr(local, "_SOURCES", {})
    yield
    shutdown_all()


def engine_of(model: str, **options):
    return asyncio.run(LocalBackend(model, engine=options).engine())


def test_different_engine_options_get_different_engines(registry, tiny_llama_dir):
    model = str(tiny_llama_dir)
    small = engine_of(model, num_kv_blocks=32, block_size=4)
    assert engine_of(model, num_kv_blocks=32, block_size=4) is small
    large = engine_of(model, num_kv_blocks=64, block_size=4)
    assert large is not small
    assert (small.engine.config.num_kv_blocks, large.engine.config.num_kv_blocks) == (32, 64)
    assert engine_of(model) is small  # no options: any engine of the model will do
    assert engine_of(model, block_size=4, num_kv_blocks=64) is large


def test_registered_engine_is_reused_only_when_options_agree(registry, tiny_llama_dir):
    from lamina.engine.engine import AsyncEngine

    served = AsyncEngine(str(tiny_llama_dir), num_kv_blocks=32, block_size=4)
    register_engine("served", served)  # as `lamina serve --model served=PATH` does
    assert shared_engine("served") is served
    assert shared_engine("served", num_kv_blocks=32, max_num_seqs=128) is served  # 128: the default, so it agrees
    other = shared_engine("served", num_kv_blocks=48, block_size=4)
    assert other is not served and other.engine.config.num_kv_blocks == 48
    assert other.model_name == str(tiny_llama_dir)  # loaded from the registered engine's model, not the alias
    assert shared_engine("served") is served


def test_unknown_engine_option_is_a_clear_error(registry, tiny_llama_dir):
    from lamina.errors import InvalidRequestError

    engine_of(str(tiny_llama_dir), num_kv_blocks=32, block_size=4)
    with pytest.raises(InvalidRequestError, match="unknown engine option.*kv_blocks"):
        engine_of(str(tiny_llama_dir), kv_blocks=3)
