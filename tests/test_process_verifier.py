"""Process verifier on the tiny model: steps split at lines, rollout labels deterministic with a seed, soft-label
probe training deterministic, per-step scores shaped like the steps, save/load identical, wrong model or kind
refused; offline best-of/vote selection on scripted scores."""
from __future__ import annotations

import asyncio

import pytest

from lamina.rewards import Response
from lamina.rewards.learned import (LearnedVerifier, ProcessVerifier, VerifierError, VerifierInfo, load_verifier,
                                    prompt_ids, step_features, train_probe)
from lamina.verifiers.process import StepRows, collect_steps, fit_prm, rollout_rates, step_ends
from lamina.verifiers.select import best_of, vote
from lamina.verifiers.train import Samples

QUESTION = "What is 2 + 3?"
ANSWERS = ["2 + 3\nis 5\nThe answer is 5.", "Let me think.\nIt is 6.", "5", "First 2.\nThen 3 more.\nSo 4."]


async def even_length(text: str) -> bool:
    return len(text) % 2 == 0


@pytest.fixture(scope="module")
def async_engine(tiny_llama_dir):
    from lamina.engine.engine import AsyncEngine

    engine = AsyncEngine(str(tiny_llama_dir), num_kv_blocks=256, block_size=4)
    yield engine
    engine.shutdown()


def toy_drawn(tokenizer, per=3) -> tuple[Samples, list[int]]:
    from lamina.rewards.learned import prompt_ids

    drawn, lengths = Samples(), []
    for q in range(4):
        prompt = prompt_ids(tokenizer, f"Q{q}: {QUESTION}")
        for s in range(per):
            answer = ANSWERS[(q + s) % len(ANSWERS)]
            drawn.question_ids.append(f"q{q}")
            drawn.labels.append(int(answer.endswith("5.") or answer == "5"))
            drawn.sequences.append(prompt + tokenizer.encode(answer))
            drawn.texts.append(answer)
            lengths.append(len(prompt))
    return drawn, lengths


def test_steps_end_at_lines(tiny_llm):
    tok = tiny_llm.tokenizer
    ids = tok.encode("a b\nc d\ne f")
    ends = step_ends(tok, ids)
    assert [tok.decode(ids[:e]) for e in ends] == ["a b\n", "a b\nc d\n", "a b\nc d\ne f"]
    assert step_ends(tok, tok.encode("one line\n\n")) == [len(tok.encode("one line\n\n"))]  # no empty last step
    many = tok.encode("\n".join("abcdefghij"))
    capped = step_ends(tok, many, max_steps=3)
    assert len(capped) == 3 and capped[-1] == len(many) and capped[:2] == step_ends(tok, many)[:2]
    assert step_ends(tok, []) == []


def test_rollout_labels_are_deterministic_with_a_seed(async_engine):
    tok = async_engine.tokenizer
    prompt, completion = tok.encode("Q: " + QUESTION), tok.encode(ANSWERS[0])
    ends = step_ends(tok, completion)

    def run(seed):
        return asyncio.run(rollout_rates(async_engine, prompt, completion, ends, 4, even_length, 0.0,
                                         max_tokens=len(completion) + 6, seed=seed))

    first = run(7)
    assert first == run(7) and len(first) == len(ends) == 3
    assert first[-1] == 0.0  # the complete answer keeps its own label
    assert all(r in (0.0, 0.25, 0.5, 0.75, 1.0) for r in first)
    assert any(run(seed) != first for seed in (8, 9, 10))  # the seed matters


@pytest.fixture(scope="module")
def tiny_prm(tiny_llm, tiny_llama_dir, async_engine):
    from lamina.engine.hidden_states import model_identity

    drawn, lengths = toy_drawn(tiny_llm.tokenizer)
    judges = {q: even_length for q in set(drawn.question_ids)}
    rows = asyncio.run(collect_steps(async_engine, tiny_llm.engine, drawn, lengths, judges, 4, [1, 2], max_steps=8,
                                     temperature=1.0, max_tokens=24, seed=0))
    info = VerifierInfo(str(tiny_llama_dir), model_identity(str(tiny_llama_dir)), [1, 2], "toy", "train", seed=3,
                        kind="prm", rollouts=4)
    return fit_prm(rows, drawn, info, holdout=0.25), rows, drawn


def test_step_rows_and_soft_label_training(tiny_prm, tiny_llm):
    verifier, rows, drawn = tiny_prm
    steps = [len(step_ends(tiny_llm.tokenizer, drawn.sequences[i][len(drawn.sequences[i]) - len(
        tiny_llm.tokenizer.encode(drawn.texts[i])):])) for i in range(len(drawn.labels))]
    assert len(rows.labels) == len(rows.features) == sum(steps) and len(rows.features[0]) == 2 * 64
    assert all(0.0 <= y <= 1.0 for y in rows.labels) and any(0.0 < y < 1.0 for y in rows.labels)
    again = train_probe(rows.features, rows.labels, seed=3)
    assert again == train_probe(rows.features, rows.labels, seed=3)
    # fitted on the soft targets: with an unpenalised intercept, the mean prediction equals the mean soft label
    mean_label = sum(rows.labels) / len(rows.labels)
    assert sum(again.predict(rows.features)) / len(rows.labels) == pytest.approx(mean_label, abs=2e-3)
    assert abs(mean_label - sum(y >= 0.5 for y in rows.labels) / len(rows.labels)) > 0.01
    assert verifier.info.kind == "prm" and verifier.info.questions == 3 and verifier.info.rollouts == 4
    assert {"step_brier", "step_auroc", "auroc", "selection_accuracy"} <= set(verifier.info.metrics)
    with pytest.raises(ValueError, match="needs right and wrong"):
        train_probe(rows.features[:2], [0.0, 0.0])


def test_prm_scores_each_step_and_survives_save_load(tiny_prm, tiny_llm, tiny_llama_dir, tmp_path):
    verifier, _, _ = tiny_prm
    tok = tiny_llm.tokenizer
    steps = [[Response("2 + 3\n"), Response("is 5\n"), Response("The answer is 5.")],
             [Response("x", token_ids=tok.encode("It is 6."))], []]
    bound = verifier.bind(tiny_llm.engine, str(tiny_llama_dir))
    scores = asyncio.run(bound.score_steps(QUESTION, steps))
    assert [len(row) for row in scores] == [3, 1, 0]
    assert all(0.0 <= s <= 1.0 for row in scores for s in row) and len(set(scores[0])) == 3
    whole = asyncio.run(bound.score_steps(QUESTION, [[Response("2 + 3\nis 5\nThe answer is 5.")]]))
    assert whole[0][0] == pytest.approx(scores[0][-1], abs=1e-6)  # a step's score reads the prefix up to it
    path = tmp_path / "prm.json"
    verifier.save(path)
    loaded = ProcessVerifier.load(path)
    assert loaded.info == verifier.info
    assert asyncio.run(loaded.bind(tiny_llm.engine, str(tiny_llama_dir)).score_steps(QUESTION, steps)) == scores
    with pytest.raises(VerifierError, match="a prm verifier, expected a orm one"):
        LearnedVerifier.load(path)
    either = load_verifier(path)
    assert isinstance(either, ProcessVerifier) and either.probe == verifier.probe
    seq = prompt_ids(tok, QUESTION) + tok.encode("2 + 3\nis 5\nThe answer is 5.")
    assert bound.score_sequences([seq])[0] == pytest.approx(scores[0][-1], abs=1e-6)  # eval's last-step score
    loaded.info.model_identity = "0" * 32
    with pytest.raises(VerifierError, match="cannot score model"):
        loaded.bind(tiny_llm.engine, str(tiny_llama_dir))
    with pytest.raises(VerifierError, match="must be bound"):
        ProcessVerifier.load(path).score_prefixes([1, 2, 3], [2, 3])


def test_step_features_read_the_prefix_ends(tiny_llm):
    from lamina.rewards.learned import features_of

    seq = tiny_llm.tokenizer.encode("one\ntwo\nthree")
    feats = step_features(tiny_llm.engine, seq, [2, len(seq)], [1, 2])
    whole = features_of(tiny_llm.engine, [seq[:2], seq], [1, 2])
    import numpy as np

    assert np.allclose(feats, whole, atol=1e-4) and not np.allclose(feats[0], feats[1], atol=1e-4)


def test_offline_selection_picks_the_highest_scored_and_the_majority():
    assert best_of([0.2, None, 0.9, 0.9]) == 2 and best_of([None, None]) == 0
    assert vote(["5", "6", "6", None]) == 1
    assert vote(["5", "6", "6"], [3.0, 1.0, 1.0]) == 0
    assert vote(["5", "6"]) == 0  # ties go to the answer seen first
    assert vote([None, None]) == 0


def test_empty_step_rows_are_refused(tiny_llama_dir):
    info = VerifierInfo("m", "x", [1], kind="prm")
    with pytest.raises(ValueError, match="needs right and wrong"):
        fit_prm(StepRows(), Samples(), info, holdout=0.25)


@pytest.mark.parametrize("algorithm", ["best_of_n", "beam"])
def test_a_search_layer_uses_the_process_verifier_as_its_reward(algorithm, tiny_prm, tiny_llm, tiny_llama_dir,
                                                                 tmp_path):
    """`reward: verifier` in a search spec: each answer's score is the process verifier's score of its whole path."""
    from lamina.backends.local import shutdown_all
    from tests.archs import run_spec

    verifier, _, _ = tiny_prm
    path = tmp_path / "prm.json"
    verifier.save(path)
    spec = {"name": "s", "models": {"m": {"model": str(tiny_llama_dir),
                                          "engine": {"num_kv_blocks": 256, "block_size": 4}}},
            "layers": [[{"type": "search", "model": "m", "algorithm": algorithm, "width": 4, "beam_width": 2,
                         "depth": 2, "step_max_tokens": 4, "delimiter": " ", "reward": "verifier",
                         "verifier": str(path), "seed": 1}]]}
    try:
        result = run_spec(spec, QUESTION)
    finally:
        shutdown_all()
    assert result.final and all(c.score is not None and c.token_ids for c in result.final)
    bound = verifier.bind(tiny_llm.engine, str(tiny_llama_dir))
    direct = asyncio.run(bound.score_steps(QUESTION, [[Response(c.text, token_ids=c.token_ids)] for c in result.final]))
    assert [c.score for c in result.final] == pytest.approx([row[-1] for row in direct], abs=1e-6)
