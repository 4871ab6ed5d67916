"""AsyncEngine: streaming from many tasks at once, abort frees blocks, errors reach the caller."""
from __future__ import annotations

import asyncio

import pytest

from lamina import AsyncEngine, SamplingParams
from lamina.engine.outputs import DeltaJoiner, OutputKind
from lamina.errors import InvalidRequestError, LaminaError


PARAMS = SamplingParams(temperature=0.7, seed=3, max_tokens=12, ignore_eos=True)


@pytest.fixture(scope="module")
def expected(tiny_llm):
    return tiny_llm.generate("Hello there", PARAMS)[0].outputs[0]


@pytest.fixture(scope="module")
def engine(tiny_llm, expected):
    eng = AsyncEngine.from_llm(tiny_llm)
    yield eng
    eng.shutdown()


def test_llm_refuses_while_async_engine_drives(engine, tiny_llm):
    with pytest.raises(LaminaError, match="AsyncEngine"):
        tiny_llm.generate("Hello", SamplingParams(max_tokens=2))
    with pytest.raises(LaminaError, match="already driven"):
        AsyncEngine.from_llm(tiny_llm)


def _collect(engine, prompt, params, **kw) -> list:
    async def run():
        return [out async for out in engine.generate(prompt, params, **kw)]

    return asyncio.run(run())


def test_streams_deltas_that_join_to_the_offline_output(engine, expected):
    seen = _collect(engine, "Hello there", PARAMS)
    assert len(seen) == 12 and seen[-1].finished and not any(o.finished for o in seen[:-1])
    assert all(len(o.outputs) == 1 and len(o.outputs[0].token_ids) == 1 for o in seen)  # one new token per step
    joiner = DeltaJoiner()
    for out in seen:
        joiner.add(out.outputs[0])
    (joined,) = joiner.outputs()
    assert joined.token_ids == expected.token_ids and joined.text == expected.text
    assert [o.outputs[0].finish_reason for o in seen] == [None] * 11 + ["length"]


def test_cumulative_streams_on_request(engine, expected):
    seen = _collect(engine, "Hello there", PARAMS, output_kind=OutputKind.CUMULATIVE)
    assert [len(o.outputs[0].token_ids) for o in seen] == list(range(1, 13))
    assert seen[-1].outputs[0].token_ids == expected.token_ids and seen[-1].outputs[0].text == expected.text
    final = _collect(engine, "Hello there", PARAMS, output_kind=OutputKind.FINAL_ONLY)
    assert len(final) == 1 and final[0].outputs[0].text == expected.text


def test_many_concurrent_tasks_all_finish(engine):
    async def one(i: int):
        params = SamplingParams(max_tokens=8, seed=i, ignore_eos=True)
        return [out async for out in engine.generate(f"Prompt number {i}", params)]

    async def run():
        return await asyncio.gather(*(one(i) for i in range(24)))

    streams = asyncio.run(run())
    assert all(s[-1].finished and sum(o.num_completion_tokens for o in s) == 8 for s in streams)
    assert engine.stats()["num_free_blocks"] == engine.stats()["num_total_blocks"]


def test_abort_and_early_close_free_blocks(engine):
    async def run():
        stream = engine.generate("Abort me", SamplingParams(max_tokens=200, ignore_eos=True), request_id="victim")
        first = await stream.__anext__()
        assert not first.finished
        await engine.abort("victim")
        last = first
        async for out in stream:
            last = out
        closed = engine.generate("Close me", SamplingParams(max_tokens=200, ignore_eos=True))
        await closed.__anext__()
        await closed.aclose()  # a client that goes away
        for _ in range(200):
            stats = engine.stats()
            if stats["num_free_blocks"] == stats["num_total_blocks"] and stats["num_running"] == 0:
                break
            await asyncio.sleep(0.01)
        return last, engine.stats()

    last, stats = asyncio.run(run())
    assert last.finished and last.outputs[0].finish_reason == "abort"
    assert stats["num_free_blocks"] == stats["num_total_blocks"] and stats["num_running"] == 0


def test_bad_request_raises_in_caller(engine):
    async def run():
        async for _ in engine.generate("", SamplingParams()):
            pass

    with pytest.raises(InvalidRequestError):
        asyncio.run(run())
