"""Hidden states from the engine's loaded model equal transformers' `output_hidden_states` (tiny and real model)."""
from __future__ import annotations

import pytest
import torch

from lamina.engine.hidden_states import hidden_states, model_identity
from lamina.errors import InvalidRequestError, LaminaError

TEXTS = ["The capital of France is", "What is 7 + 5? The answer is 12, because seven plus five is twelve."]


def reference(hf_model, ids: list[int]) -> list[torch.Tensor]:
    with torch.inference_mode():
        return [h[0] for h in hf_model(torch.tensor([ids]), output_hidden_states=True).hidden_states]


def check_against(llm, hf_model, atol: float) -> None:
    seqs = [llm.tokenizer.encode(t) for t in TEXTS]
    count = len(llm.engine.model.layers)
    layers = [0, count // 2, count]
    last = hidden_states(llm.engine.model, seqs, layers)
    chosen = hidden_states(llm.engine.model, seqs, [-1, 1], positions=[[0, 2, -1], [1, 5, -2]])
    assert last.shape == (2, 3, 1, llm.engine.model.config.hidden_size) and last.dtype == torch.float32
    assert chosen.shape == (2, 2, 3, llm.engine.model.config.hidden_size)
    for b, (ids, spots) in enumerate(zip(seqs, [[0, 2, -1], [1, 5, -2]])):
        ref = reference(hf_model, ids)
        for k, layer in enumerate(layers):
            torch.testing.assert_close(last[b, k, 0], ref[layer][-1], atol=atol, rtol=1e-3)
        for k, layer in enumerate([count, 1]):
            torch.testing.assert_close(chosen[b, k], ref[layer][spots], atol=atol, rtol=1e-3)


def test_tiny_model_states_equal_transformers(tiny_llm, tiny_llama_dir):
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    check_against(tiny_llm, hf, atol=1e-4)


def test_tiny_qwen2_states_equal_transformers(tiny_qwen2_dir):
    import transformers

    from lamina import LLM

    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir, dtype=torch.float32).eval()
    check_against(LLM(str(tiny_qwen2_dir), num_kv_blocks=64, block_size=4), hf, atol=1e-4)


def test_real_model_states_equal_transformers(real_llm, hf_smollm2):
    check_against(real_llm, hf_smollm2, atol=3e-3)


def test_bad_requests_are_clear_errors(tiny_llm):
    model = tiny_llm.engine.model
    with pytest.raises(InvalidRequestError, match="layer 5 out of range for a model with 2 layers"):
        hidden_states(model, [[1, 2]], [5])
    with pytest.raises(InvalidRequestError,
                       match=r"position 3 of sequence 1: must be an int in -2 \.\. 1 \(the sequence has 2 tokens\)"):
        hidden_states(model, [[1, 2, 3], [1, 2]], [1], positions=[[0], [3]])
    with pytest.raises(InvalidRequestError, match="position 0.5 of sequence 0: must be an int"):
        hidden_states(model, [[1, 2]], [1], positions=[[0.5]])
    with pytest.raises(InvalidRequestError, match="equally long"):
        hidden_states(model, [[1, 2], [3, 4]], [1], positions=[[0], [0, 1]])
    with pytest.raises(InvalidRequestError, match="list of int lists"):
        hidden_states(model, [[1, 2], [3, 4]], [1], positions=[0, 1])  # flat only for one sequence
    with pytest.raises(InvalidRequestError, match="list of int lists"):
        hidden_states(model, [[1, 2]], [1], positions=3)
    for layers in ([], -1, [1.0], [True]):
        with pytest.raises(InvalidRequestError, match="non-empty list of ints"):
            hidden_states(model, [[1, 2]], layers)
    flat = hidden_states(model, [[1, 2, 3]], [1], positions=[0, -1])  # one sequence: its row given flat
    assert torch.equal(flat, hidden_states(model, [[1, 2, 3]], [1], positions=[[0, -1]]))


def test_model_identity_follows_the_weights_not_the_name(tiny_llama_dir, tmp_path):
    import shutil

    copy = tmp_path / "renamed"
    shutil.copytree(tiny_llama_dir, copy)
    assert model_identity(str(copy)) == model_identity(str(tiny_llama_dir))
    (copy / "config.json").write_text((copy / "config.json").read_text().replace("\n", "\n "))
    assert model_identity(str(copy)) != model_identity(str(tiny_llama_dir))


def test_the_engine_api_returns_states_of_prompts_and_branches(tiny_llm, tiny_llama_dir):
    """LLM.hidden_states (texts tokenized as requests are) and branch_hidden_states (a branch's whole token list)
    from the loaded model; AsyncEngine's the same, on its engine thread; bad input an InvalidRequestError."""
    from lamina.engine.engine import AsyncEngine
    from lamina.engine.sampling_params import SamplingParams

    model, tok = tiny_llm.engine.model, tiny_llm.tokenizer
    ids = [tok.encode_prompt(t) for t in TEXTS]
    states = tiny_llm.hidden_states(TEXTS, [1, -1], positions=[[0, -1], [2, -1]])
    assert torch.equal(states, hidden_states(model, ids, [1, 2], positions=[[0, -1], [2, -1]]))
    assert torch.equal(tiny_llm.hidden_states(ids[0], [2]), hidden_states(model, ids[:1], [2]))
    root = tiny_llm.open_branch(TEXTS[0])
    names = [root.branch_id]
    try:
        children = tiny_llm.extend_branch(root.branch_id, SamplingParams(n=2, max_tokens=3, temperature=1.0, seed=1))
        names += [c.branch_id for c in children]
        last_prompt = len(ids[0]) - 1
        got = tiny_llm.branch_hidden_states(names[1:], [1, 2], positions=[[last_prompt, -1]] * 2)
        assert got.shape == (2, 2, 2, model.config.hidden_size)
        prompt_states = hidden_states(model, ids[:1], [1, 2])[0, :, 0]  # independent of the branch's token list
        for i, child in enumerate(children):
            assert child.token_ids[:len(ids[0])] == ids[0] and len(child.token_ids) > len(ids[0])
            assert torch.equal(got[i], hidden_states(model, [child.token_ids], [1, 2], [[last_prompt, -1]])[0])
            assert torch.allclose(got[i, :, 0], prompt_states, atol=1e-5)
        one = tiny_llm.branch_hidden_states(names[1], [2])  # one id, not a list of its characters
        assert torch.equal(one, got[:1, 1:, 1:])
        with pytest.raises(InvalidRequestError, match="layer 3 out of range"):
            tiny_llm.hidden_states(TEXTS, [3])
        with pytest.raises(InvalidRequestError, match="outside the vocabulary"):
            tiny_llm.hidden_states([[1, 10 ** 6]], [1])
    finally:
        for branch in names:  # the session's engine: give its blocks back
            tiny_llm.release_branch(branch)
    with pytest.raises(InvalidRequestError, match="unknown or was released"):
        tiny_llm.branch_hidden_states([root.branch_id], [1])

    async def on_the_async_engine():
        engine = AsyncEngine(str(tiny_llama_dir), num_kv_blocks=64, block_size=4)
        try:
            prompts = await engine.hidden_states(TEXTS, [1, -1], positions=[[0, -1], [2, -1]])
            opened = await engine.open_branch(TEXTS[0])
            params = SamplingParams(n=2, max_tokens=3, temperature=1.0, seed=1)
            branches = [c.branch_id for c in await engine.extend_branch(opened.branch_id, params)]
            stream = engine.generate(TEXTS[1], SamplingParams(max_tokens=8, temperature=0.0))
            first = await stream.__anext__()  # a request streams while the states are computed between its steps
            on_branches = await engine.branch_hidden_states(branches, [1, 2], positions=[[last_prompt, -1]] * 2)
            rest = [out async for out in stream]
            with pytest.raises(InvalidRequestError, match="position 99 of sequence 0"):
                await engine.branch_hidden_states(branches, [1], positions=[[99]] * 2)
            return prompts, on_branches, first, rest
        finally:
            engine.shutdown()

    prompts, on_branches, first, rest = __import__("asyncio").run(on_the_async_engine())
    assert torch.allclose(prompts, states, atol=1e-6)
    assert torch.allclose(on_branches, got, atol=1e-6)  # the same seeded children as the LLM's
    assert (rest or [first])[-1].finished
    driven = AsyncEngine.from_llm(tiny_llm)
    try:
        with pytest.raises(LaminaError, match="driven by an AsyncEngine"):
            tiny_llm.hidden_states(TEXTS, [1])
    finally:
        driven.shutdown()
