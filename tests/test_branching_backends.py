"""Backends on branches (lamina.backends.branching) on the tiny random model: the local backend on the engine's branch
API, and the OpenAI-compatible backend's emulation against a real `lamina serve` of the same model on loopback."""
from __future__ import annotations

import asyncio

import pytest

from lamina import LLM, SamplingParams
from lamina.backends.local import LocalBackend, shutdown_all
from lamina.backends.openai import OpenAIBackend
from lamina.decoding import SearchConfig, search
from lamina.errors import BackendError
from lamina.rewards import mean_logprob_reward
from tests.serving import serve

MESSAGES = [{"role": "user", "content": "Count with me: one, two,"}]
STEP = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)


@pytest.fixture
def local(tiny_llama_dir):
    backend = LocalBackend(str(tiny_llama_dir), engine={"num_kv_blocks": 256, "block_size": 4})
    yield backend
    shutdown_all()


def test_local_greedy_steps_match_one_request_share_blocks_and_count_usage(local, tiny_llama_dir):
    async def go():
        root = await local.open_tree(MESSAGES)
        handle, texts, held = root, [], [root]
        for _ in range(3):
            (step,) = await local.extend(handle, STEP)
            texts.append(step.text)
            handle = step.handle
            held.append(handle)
        fan = await local.extend(handle, SamplingParams(n=3, temperature=1.0, seed=3, max_tokens=4, ignore_eos=True,
                                                         logprobs=2))
        blocks = await local.tree_blocks([s.handle for s in fan])
        engine = (await local.engine()).engine
        for h in held + [s.handle for s in fan]:
            await local.release(h)
        return texts, fan, blocks, engine

    texts, fan, blocks, engine = asyncio.run(go())
    whole = LLM.__new__(LLM)
    whole.engine = engine
    engine.driver = None
    prompt = engine.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True)
    assert "".join(texts) == whole.generate(prompt, STEP.replace(max_tokens=12))[0].outputs[0].text
    assert len(fan) == 3 and all(s.num_tokens == 4 and len(s.token_ids) == 4 and len(s.logprobs) == 4 for s in fan)
    assert all(len(s.logprobs[0].top) >= 1 for s in fan)
    assert blocks.num_used_blocks < blocks.num_copy_per_path_blocks  # the three paths share the prefix's blocks
    usage = local.usage
    assert usage.calls == 5 and usage.completion_tokens == 3 * 4 + 3 * 4  # the opening is a call with no completion
    assert usage.cached_prompt_tokens > 0
    assert engine.num_free_blocks == engine.num_total_blocks and not engine.branches.branches


def test_a_seeded_search_on_the_tiny_model_gives_the_same_tree_twice(local):
    config = SearchConfig(width=4, beam_width=2, depth=3, step_max_tokens=6, delimiter=" ", seed=9)

    async def go():
        return [await search("particle_filter", local, mean_logprob_reward(), MESSAGES, config) for _ in range(2)]

    one, two = asyncio.run(go())
    shape = [[row[:3] + row[4:] for row in r.to_trace()["nodes"]] for r in (one, two)]
    assert shape[0] == shape[1] and len(one.nodes) > 4  # the same steps (logprobs differ in float rounding only:
    assert [n.score for n in one.nodes] == pytest.approx([n.score for n in two.nodes], abs=1e-4)  # cached prefill)
    assert one.blocks is not None and one.blocks.num_used_blocks <= one.blocks.num_copy_per_path_blocks
    assert one.usage.cached_prompt_tokens > 0 and one.usage.reward_calls == len(one.nodes) - 1


@pytest.fixture(scope="module")
def tiny_server(tiny_llama_dir):
    with serve("--model", f"default={tiny_llama_dir}", "--num-kv-blocks", "256") as base:
        yield base + "/v1"


def test_openai_emulation_continues_the_partial_reply_against_lamina_serve(tiny_server, tiny_llm):
    backend = OpenAIBackend("default", base_url=tiny_server)

    async def go():
        try:
            root = await backend.open_tree(MESSAGES)
            (first,) = await backend.extend(root, STEP)
            (second,) = await backend.extend(first.handle, STEP)
            pair = await backend.extend(second.handle, SamplingParams(n=2, temperature=1.0, seed=4, max_tokens=3,
                                                                      ignore_eos=True))
            await backend.release(first.handle)
            with pytest.raises(BackendError, match="unknown or was released"):
                await backend.extend(first.handle, STEP)
            return first, second, pair
        finally:
            await backend.aclose()

    first, second, pair = asyncio.run(go())
    tok = tiny_llm.tokenizer
    opened = tok.apply_chat_template(MESSAGES, add_generation_prompt=True)
    assert first.text == tiny_llm.generate(opened, STEP)[0].outputs[0].text
    continued = tok.apply_chat_template([*MESSAGES, {"role": "assistant", "content": first.text}],
                                        add_generation_prompt=False, continue_final_message=True)
    assert second.text == tiny_llm.generate(continued, STEP)[0].outputs[0].text  # the partial reply was continued
    assert len(pair) == 2 and pair[0].handle.endswith(".0") and pair[0].text != pair[1].text
    assert backend.usage.calls == 3 and backend.usage.completion_tokens == 4 + 4 + 6
    assert backend.usage.prompt_tokens > 0
