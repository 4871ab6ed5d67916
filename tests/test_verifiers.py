"""Learned verifiers on the tiny model: deterministic probe training, identical scores after save/load, the wrong
model refused, the metrics exact on small cases, and the verifier as a reward / vote weight in an architecture."""
from __future__ import annotations

import asyncio
import random

import pytest

from lamina.rewards import Response
from lamina.rewards.learned import (LearnedVerifier, VerifierError, VerifierInfo, features_of, prompt_ids,
                                    train_probe)
from lamina.verifiers import metrics
from lamina.verifiers.train import Samples, fit

from tests.archs import run_spec
from tests.scripted import ScriptedBackend

QUESTION = "What is 2 + 2?"


def toy_samples(tokenizer, n_questions=6, per=4, seed=0):
    """Samples whose label is whether the answer text says 4 (so the states carry the label)."""
    rng = random.Random(seed)
    out = Samples()
    for q in range(n_questions):
        for _ in range(per):
            answer = rng.choice(["4", "The answer is 4.", "5", "It is 7.", "four", "3"])
            out.question_ids.append(f"q{q}")
            out.labels.append(int("4" in answer or answer == "four"))
            out.sequences.append(tokenizer.encode(f"Q{q}: {QUESTION} A: {answer}"))
            out.texts.append(answer)
    return out


@pytest.fixture(scope="module")
def tiny_verifier(tiny_llm, tiny_llama_dir):
    from lamina.engine.hidden_states import model_identity

    samples = toy_samples(tiny_llm.tokenizer)
    features = features_of(tiny_llm.engine, samples.sequences, [1, 2])
    info = VerifierInfo(str(tiny_llama_dir), model_identity(str(tiny_llama_dir)), [1, 2], "toy", "train", seed=3)
    return fit(samples, features, info, holdout=0.34), samples, features


def test_probe_training_is_deterministic_with_a_seed(tiny_verifier, tiny_llm):
    verifier, samples, features = tiny_verifier
    again = train_probe(features[:18], samples.labels[:18], seed=3)
    assert again == train_probe(features[:18], samples.labels[:18], seed=3)
    info = verifier.info
    assert info.layers == [1, 2] and info.questions == 4 and info.samples == 16
    assert set(info.metrics) >= {"auroc", "ece", "selection_accuracy", "coverage", "first_sample_accuracy"}
    assert info.metrics["questions"] == 2
    with pytest.raises(ValueError, match="needs right and wrong samples"):
        train_probe(features[:3], [1, 1, 1])


def test_a_saved_verifier_scores_identically_and_refuses_another_model(tiny_verifier, tiny_llm, tiny_llama_dir,
                                                                       tmp_path):
    verifier, _, _ = tiny_verifier
    path = tmp_path / "v.json"
    verifier.save(path)
    loaded = LearnedVerifier.load(path)
    answers = [Response("4"), Response("5"), Response("x", token_ids=tiny_llm.tokenizer.encode(" It is 4."))]
    before = asyncio.run(verifier.bind(tiny_llm.engine, str(tiny_llama_dir)).score(QUESTION, answers))
    after = asyncio.run(loaded.bind(tiny_llm.engine, str(tiny_llama_dir)).score(QUESTION, answers))
    assert before == after and all(0.0 <= s <= 1.0 for s in after) and len(set(after)) == 3
    assert loaded.info == verifier.info
    loaded.info.model_identity = "0" * 32
    with pytest.raises(VerifierError, match="cannot score model .* train one for that model"):
        loaded.bind(tiny_llm.engine, str(tiny_llama_dir))
    with pytest.raises(VerifierError, match="must be bound"):
        loaded.score_sequences([[1, 2]])
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(VerifierError, match="not a verifier file"):
        LearnedVerifier.load(tmp_path / "bad.json")


def test_metrics_on_small_cases():
    assert metrics.auroc([0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0]) == 0.75
    assert metrics.auroc([0.5, 0.5], [1, 0]) == 0.5 and metrics.auroc([0.5], [1]) is None
    assert metrics.ece([0.9, 0.9, 0.1, 0.1], [1, 0, 0, 0]) == pytest.approx((0.8 + 0.2) / 4)
    qs = ["a", "a", "b", "b", "c"]
    assert metrics.selection_accuracy(qs, [0.2, 0.7, 0.5, 0.5, 0.1], [0, 1, 0, 1, 0]) == pytest.approx(1 / 3)
    assert metrics.coverage(qs, [0, 1, 0, 1, 0]) == pytest.approx(2 / 3)
    assert metrics.first_sample_accuracy(qs, [0, 1, 1, 0, 0]) == pytest.approx(1 / 3)


def test_an_architecture_ranks_and_weights_by_the_verifier(tiny_verifier, tiny_llama_dir, tmp_path):
    verifier, _, _ = tiny_verifier
    path = tmp_path / "v.json"
    verifier.save(path)
    model = {"m": {"model": str(tiny_llama_dir), "engine": {"num_kv_blocks": 128, "block_size": 4},
                   "params": {"max_tokens": 6, "temperature": 1.0}}}
    layers = [[{"type": "generate", "samples": 4}], [{"type": "reward", "mode": "verifier", "verifier": str(path)}]]
    result = run_spec({"name": "v", "models": model, "layers": layers}, QUESTION)
    scores = [c.score for c in result.final]
    assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
    from lamina import LLM

    llm = LLM(str(tiny_llama_dir), num_kv_blocks=64, block_size=4)
    direct = asyncio.run(verifier.bind(llm.engine, str(tiny_llama_dir)).score(
        QUESTION, [Response(c.text, token_ids=c.token_ids) for c in result.final]))
    assert direct == pytest.approx(scores, abs=1e-9)
    # the verifier's forward pass is usage of its component: the prompt once and each sample's tokens
    prompt = len(prompt_ids(llm.tokenizer, QUESTION))
    read = result.usage.by_component["L1.0.reward"]
    assert read.prompt_tokens == prompt + sum(len(c.token_ids) for c in result.final) and read.calls == 1
    assert read.completion_tokens == 0 and read.seconds > 0
    assert result.usage.prompt_tokens == result.usage.by_component["L0.0.generate"].prompt_tokens + read.prompt_tokens
    vote = [[{"type": "generate", "samples": 4}],
            [{"type": "vote", "weights": "verifier", "verifier": str(path), "extract": "text", "keep": "all"}]]
    voted = run_spec({"name": "v", "models": model, "layers": vote}, QUESTION)
    assert not [e for e in voted.trace if e.get("fallback")]


def test_rank_by_the_verifier_keeps_the_top_scored_samples(tiny_verifier, tiny_llm, tiny_llama_dir, tmp_path):
    """rank with `method: reward, reward_mode: verifier`: the top_k kept are the samples the verifier scores
    highest, in that order."""
    verifier, _, _ = tiny_verifier
    path = tmp_path / "v.json"
    verifier.save(path)
    model = {"m": {"model": str(tiny_llama_dir), "engine": {"num_kv_blocks": 128, "block_size": 4},
                   "params": {"max_tokens": 6, "temperature": 1.0}}}
    layers = [[{"type": "generate", "samples": 6}],
              [{"type": "rank", "method": "reward", "reward_mode": "verifier", "verifier": str(path), "top_k": 2}]]
    result = run_spec({"name": "r", "models": model, "layers": layers}, QUESTION)
    samples = result.first_layer_samples()
    scores = asyncio.run(verifier.bind(tiny_llm.engine, str(tiny_llama_dir)).score(
        QUESTION, [Response(c.text, token_ids=c.token_ids) for c in samples]))
    assert len(samples) == 6 and len(set(scores)) == 6
    best = sorted(range(6), key=lambda i: -scores[i])[:2]
    assert [c.text for c in result.final] == [samples[i].text for i in best]


def test_a_verifier_on_a_backend_without_hidden_states_is_a_clear_error(tiny_verifier, tmp_path):
    verifier, _, _ = tiny_verifier
    verifier.save(tmp_path / "v.json")
    layers = [[{"type": "generate", "samples": 2}],
              [{"type": "reward", "mode": "verifier", "verifier": str(tmp_path / "v.json")}]]
    with pytest.raises(VerifierError, match="have no hidden states here"):
        run_spec({"name": "v", "models": {"m": {"model": "scripted"}}, "layers": layers}, QUESTION,
                 backends={"m": ScriptedBackend()})
    layers[1][0]["verifier"] = str(tmp_path / "missing.json")
    with pytest.raises(VerifierError, match="cannot read"):
        run_spec({"name": "v", "models": {"m": {"model": "scripted"}}, "layers": layers}, QUESTION,
                 backends={"m": ScriptedBackend()})


def test_an_mlp_probe_is_deterministic_and_survives_save_load(tiny_verifier, tiny_llm, tiny_llama_dir, tmp_path):
    verifier, samples, features = tiny_verifier
    mlp = train_probe(features, samples.labels, seed=3, kind="mlp")
    assert mlp == train_probe(features, samples.labels, seed=3, kind="mlp") and mlp.kind == "mlp"
    assert len(mlp.hidden) == 1 and len(mlp.hidden[0]) == len(features[0]) and len(mlp.weights) == 64
    import numpy as np
    from sklearn.neural_network import MLPClassifier

    x = np.asarray(features)
    z = (x - np.asarray(mlp.mean)) / np.asarray(mlp.scale)
    reference = MLPClassifier((64,), alpha=1e-3, max_iter=300, random_state=3).fit(z, samples.labels)
    assert mlp.predict(features) == pytest.approx(reference.predict_proba(z)[:, 1].tolist(), abs=1e-9)
    mlp_verifier = LearnedVerifier(mlp, verifier.info)
    mlp_verifier.save(tmp_path / "mlp.json")
    loaded = LearnedVerifier.load(tmp_path / "mlp.json")
    assert loaded.probe == mlp
    answers = [Response("4"), Response("5")]
    scores = [asyncio.run(v.bind(tiny_llm.engine, str(tiny_llama_dir)).score(QUESTION, answers))
              for v in (mlp_verifier, loaded, verifier)]
    assert scores[0] == scores[1] != scores[2]
    with pytest.raises(ValueError, match="probe must be one of logistic, mlp"):
        train_probe(features, samples.labels, kind="tree")


def test_an_ensemble_verifier_reads_the_other_models_answers_with_its_own_model(tiny_verifier, tiny_llama_dir,
                                                                               tiny_qwen2_dir, tmp_path):
    verifier, _, _ = tiny_verifier  # trained on the tiny Llama; the tiny Qwen2 is another model
    path = tmp_path / "v.json"
    verifier.save(path)
    engine = {"num_kv_blocks": 128, "block_size": 4}
    params = {"max_tokens": 6, "temperature": 1.0}
    models = {"llama": {"model": str(tiny_llama_dir), "engine": engine, "params": params},
              "qwen": {"model": str(tiny_qwen2_dir), "engine": engine, "params": params}}
    reward = [{"type": "reward", "mode": "verifier", "verifier": str(path), "top_k": 4}]
    both = [[{"type": "generate", "model": "llama", "samples": 2}, {"type": "generate", "model": "qwen", "samples": 2}],
            reward]
    result = run_spec({"name": "v", "models": models, "layers": both}, QUESTION)
    assert {c.model for c in result.final} == {"llama", "qwen"}
    assert all(c.score is not None and 0.0 <= c.score <= 1.0 for c in result.final)
    from lamina import LLM

    llm = LLM(str(tiny_llama_dir), num_kv_blocks=64, block_size=4)
    reader = verifier.bind(llm.engine, str(tiny_llama_dir))
    qwen = [c for c in result.final if c.model == "qwen"]
    direct = asyncio.run(reader.score(QUESTION, [Response(c.text) for c in qwen]))  # re-read as text by the Llama
    assert direct == pytest.approx([c.score for c in qwen], abs=1e-9)
    only_qwen = [[{"type": "generate", "model": "qwen", "samples": 2}], reward]
    with pytest.raises(VerifierError, match="cannot score model"):
        run_spec({"name": "v", "models": models, "layers": only_qwen}, QUESTION)


def test_a_verifier_of_programs_keeps_its_technique_and_refuses_an_unknown_one(tiny_verifier, tmp_path):
    from dataclasses import replace

    from lamina.verifiers.train import sample_task

    verifier, _, _ = tiny_verifier
    path = tmp_path / "programs.json"
    LearnedVerifier(verifier.probe, replace(verifier.info, technique="program")).save(path)
    assert LearnedVerifier.load(path).info.technique == "program" and verifier.info.technique == "generate"
    with pytest.raises(ValueError, match="technique 'essay': one of generate, program"):
        asyncio.run(sample_task("default", None, "train", 2, technique="essay"))


def test_cli_refuses_a_process_verifier_of_programs(tmp_path, capsys):
    from lamina.cli import main

    code = main(["verifier", "train", "--task", "arith-1", "--kind", "prm", "--technique", "program",
                 "--out", str(tmp_path / "v.json")])
    assert code == 2 and "--technique program" in capsys.readouterr().err
    assert not (tmp_path / "v.json").exists()


@pytest.mark.slow
def test_program_samples_on_the_real_model_are_labelled_by_what_they_print():
    """technique="program": each sample is a program run in the sandbox, labelled by the scorer on its printed answer;
    its sequence is the question's prompt + the program's tokens (what a verifier reads of a program candidate)."""
    from lamina.eval.scorers import Scorer
    from lamina.rewards.learned import prompt_ids
    from lamina.tasks.task import load_task
    from lamina.verifiers.train import sample_task

    task = load_task("arith-1")
    drawn, engine = asyncio.run(sample_task("default", task, "dev", 4, limit=3, technique="program",
                                            engine={"kv_cache_memory_gb": 0.25}))
    examples = task.examples("dev", 3)
    scorer = Scorer.from_spec(task.scorer)
    scorer.prepare()
    assert len(drawn.labels) == 12 and drawn.question_ids[::4] == [e.id for e in examples]
    for i, (text, label, seq, start) in enumerate(zip(drawn.texts, drawn.labels, drawn.sequences, drawn.starts)):
        example = examples[i // 4]
        messages = task.messages(example)
        assert seq[:start] == prompt_ids(engine.tokenizer, messages)
        program = engine.tokenizer.decode(seq[start:])
        assert "print" in program or text == ""  # a program that answers printed its answer
        score = asyncio.run(scorer.score(text, example, messages[-1]["content"]))
        assert label == int(score.value >= 0.5)
    assert any(t for t in drawn.texts) and all(len(t) < 40 for t in drawn.texts)  # printed answers, not programs


def test_a_verifier_judges_only_the_kind_of_candidate_it_learnt(tiny_verifier, tiny_llama_dir, tmp_path):
    """A verifier of programs refuses plain answers and an answers' verifier refuses executed programs (a program
    candidate's text is what it printed, its tokens the program's); a program that printed nothing scores None."""
    from dataclasses import replace

    verifier, _, _ = tiny_verifier
    answers, programs = tmp_path / "answers.json", tmp_path / "programs.json"
    verifier.save(answers)
    LearnedVerifier(verifier.probe, replace(verifier.info, technique="program")).save(programs)
    model = {"m": {"model": str(tiny_llama_dir), "engine": {"num_kv_blocks": 128, "block_size": 4},
                   "params": {"max_tokens": 6, "temperature": 1.0}}}

    def spec(first, path):
        return {"name": "v", "models": model,
                "layers": [[first], [{"type": "reward", "mode": "verifier", "verifier": str(path)}]]}

    with pytest.raises(VerifierError, match="trained on programs .* are answers"):
        run_spec(spec({"type": "generate", "samples": 2}, programs), QUESTION)
    program = {"type": "program", "samples": 2, "timeout_s": 1}
    with pytest.raises(VerifierError, match="trained on answers .* are executed programs"):
        run_spec(spec(program, answers), QUESTION)
    result = run_spec(spec(program, programs), QUESTION)  # the random model's programs print nothing
    assert [c.answer for c in result.final] == [None, None] and [c.score for c in result.final] == [None, None]


def test_a_verifier_weighted_vote_over_programs_ignores_the_ones_that_printed_nothing(monkeypatch):
    """A failed program has no verifier score (None) and no answer: the vote stays weighted by the others' scores."""
    import lamina.techniques.vote as vote_module

    async def scores(state, cands, mode, verifier=None, component="verifier"):
        return [None if c.answer is None else {"42": 0.9, "13": 0.2}[c.answer] for c in cands]

    monkeypatch.setattr(vote_module, "own_scores", scores)
    programs = ["```python\nprint(6 + 7)\n```", "```python\nprint(1 / 0)\n```", "```python\nprint(6 + 7)\n```",
                "```python\nprint(6 * 7)\n```"]
    backend = ScriptedBackend({"Write a short Python program": programs})
    spec = {"name": "pv", "models": {"m": {"model": "scripted"}},
            "layers": [[{"type": "program", "samples": 4, "timeout_s": 2, "examples": []}],
                       [{"type": "vote", "weights": "verifier", "verifier": "v.json", "extract": "number"}]]}
    result = run_spec(spec, [{"role": "user", "content": "What is 6 * 7?"}], backends={"m": backend})
    assert result.answer == "42"  # 0.9 against 2 x 0.2; unweighted, 13 would win 2 to 1
    assert not [e for e in result.trace if str(e.get("fallback", "")).startswith("no scores")]
