"""Hidden states from the engine's loaded model equal transformers' `output_hidden_states` (tiny and real model)."""
from __future__ import annotations

import pytest
import torch

from lamina.engine.hidden_states import hidden_states, model_identity
from lamina.errors import InvalidRequestError

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
    with pytest.raises(InvalidRequestError, match="position 3 out of range"):
        hidden_states(model, [[1, 2]], [1], positions=[[3]])
    with pytest.raises(InvalidRequestError, match="equally long"):
        hidden_states(model, [[1, 2], [3, 4]], [1], positions=[[0], [0, 1]])


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
    children = tiny_llm.extend_branch(root.branch_id, SamplingParams(n=2, max_tokens=3, temperature=1.0, seed=1))
    names = [c.branch_id for c in children]
    got = tiny_llm.branch_hidden_states(names, [1, 2], positions=[[len(ids[0]) - 1, -1]] * 2)
    assert got.shape == (2, 2, 2, model.config.hidden_size)
    for i, child in enumerate(children):
        assert len(child.token_ids) > len(ids[0])
        assert torch.equal(got[i], hidden_states(model, [child.token_ids], [1, 2], [[len(ids[0]) - 1, -1]])[0])
    with pytest.raises(InvalidRequestError, match="layer 3 out of range"):
        tiny_llm.hidden_states(TEXTS, [3])
    with pytest.raises(InvalidRequestError, match="outside the vocabulary"):
        tiny_llm.hidden_states([[1, 10 ** 6]], [1])
    for branch in [root.branch_id, *names]:  # the session's engine: give its blocks back
        tiny_llm.release_branch(branch)
    with pytest.raises(InvalidRequestError):
        tiny_llm.branch_hidden_states([root.branch_id], [1])

    async def on_the_async_engine():
        engine = AsyncEngine(str(tiny_llama_dir), num_kv_blocks=64, block_size=4)
        try:
            return await engine.hidden_states(TEXTS, [1, -1], positions=[[0, -1], [2, -1]])
        finally:
            engine.shutdown()

    assert torch.allclose(__import__("asyncio").run(on_the_async_engine()), states, atol=1e-6)
