"""ORM features beyond the last token (mean-pooled answer states, the answer's token statistics) equal a transformers
reference; features and regularisation chosen by cross-validation on the training questions only, deterministically;
a verifier reading them scores the same after save/load and through the reward API; samples saved and read back."""
from __future__ import annotations

import asyncio
import math

import pytest
import torch

from lamina.engine.hidden_states import answer_summary
from lamina.errors import InvalidRequestError
from lamina.rewards import Response
from lamina.rewards.learned import (LearnedVerifier, VerifierInfo, assemble, feature_blocks, features_of,
                                    prompt_ids)
from lamina.verifiers.train import (Samples, cross_validate, fit_selected, held_out_questions, question_folds,
                                    select_features)

QUESTION = "What is 2 + 2?"
ANSWERS = ["4", "The answer is 4.", "5", "It is 7.", "four", "3", "2 + 2 = 4", "I think 6"]


def toy_samples(tokenizer, n_questions=8, per=4, flip_every=0):
    """Samples (with answer starts) whose label is whether the answer says 4; question q's answers rotate; with
    flip_every, every such sample's label is flipped (noise, so candidates differ in cross-validation)."""
    out = Samples()
    for q in range(n_questions):
        prompt = prompt_ids(tokenizer, f"Q{q}: {QUESTION}")
        for k in range(per):
            answer = ANSWERS[(q + 3 * k) % len(ANSWERS)]
            out.question_ids.append(f"q{q}")
            flip = bool(flip_every) and (q * per + k) % flip_every == 0
            out.labels.append(int("4" in answer or answer == "four") ^ flip)
            out.sequences.append(prompt + tokenizer.encode(answer))
            out.starts.append(len(prompt))
            out.texts.append(answer)
    return out


def check_summary(llm, hf, atol: float) -> None:
    tok = llm.tokenizer
    first = tok.encode("Q: what is 2 + 2? A: it is 4")
    seqs = [first, tok.encode("Q: hi A: hello there, friend"), tok.encode("a b"),
            first[:9] + tok.encode(" five, I think"), first[:9]]  # the last two share the first one's prompt
    starts = [9, 6, 2, 9, 9]  # the third and the last have an empty answer
    layers = [1, len(llm.engine.model.layers)]
    last, mean, stats = answer_summary(llm.engine.model, seqs, starts, layers)
    hidden = llm.engine.model.config.hidden_size
    assert last.shape == (5, 2, hidden) and mean.shape == (5, 2, hidden) and stats.shape == (5, 4)
    for b, (ids, start) in enumerate(zip(seqs, starts)):
        with torch.inference_mode():
            out = hf(torch.tensor([ids]), output_hidden_states=True)
        rows = slice(min(start, len(ids) - 1), len(ids))
        for k, layer in enumerate(layers):
            ref = out.hidden_states[layer][0]
            torch.testing.assert_close(last[b, k], ref[-1], atol=atol, rtol=1e-3)
            torch.testing.assert_close(mean[b, k], ref[rows].mean(0), atol=atol, rtol=1e-3)
        if start == len(ids):
            assert stats[b].tolist() == [0.0, 0.0, 0.0, 0.0]
            continue
        logp = torch.log_softmax(out.logits[0, start - 1:-1].float(), -1)
        chosen = logp.gather(1, torch.tensor(ids[start:]).view(-1, 1))[:, 0]
        entropy = -(logp.exp() * logp).sum(-1).mean()
        expected = [chosen.mean().item(), chosen.min().item(), entropy.item(), math.log1p(len(ids) - start)]
        assert stats[b].tolist() == pytest.approx(expected, abs=max(atol, 1e-4) * 10)
    with pytest.raises(InvalidRequestError, match="answer start 0 out of range"):
        answer_summary(llm.engine.model, seqs[:1], [0], [1])


def test_answer_summary_equals_transformers(tiny_llm, tiny_llama_dir):
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    check_summary(tiny_llm, hf, atol=1e-4)


def test_answers_of_one_prompt_share_its_pass_and_match_each_alone(tiny_llm, monkeypatch):
    model, tok = tiny_llm.engine.model, tiny_llm.tokenizer
    prompt = prompt_ids(tok, QUESTION)
    seqs = [prompt + tok.encode(a) for a in ANSWERS[:4]] + [prompt_ids(tok, "Other?") + tok.encode("yes")]
    starts = [len(prompt)] * 4 + [len(seqs[-1]) - len(tok.encode("yes"))]
    alone = [answer_summary(model, [s], [b], [1, 2]) for s, b in zip(seqs, starts)]
    read = []
    embed = model.embed
    monkeypatch.setattr(model, "embed", lambda ids: read.append(len(ids)) or embed(ids))
    together = answer_summary(model, seqs, starts, [1, 2])
    answers = sum(len(s) - b for s, b in zip(seqs, starts))
    assert read == [len(prompt) + starts[-1] + answers]  # each distinct prompt read once
    for i, one in enumerate(alone):
        for part, whole in zip(one, together):
            torch.testing.assert_close(whole[i], part[0], atol=1e-5, rtol=1e-5)


def test_real_model_answer_summary_equals_transformers(real_llm, hf_smollm2):
    check_summary(real_llm, hf_smollm2, atol=3e-3)


def test_features_assemble_in_order_and_need_starts(tiny_llm):
    samples = toy_samples(tiny_llm.tokenizer, 2, 2)
    blocks = feature_blocks(tiny_llm.engine, samples.sequences, samples.starts, [1, 2])
    x = assemble(blocks, [1, 2], [2], ["mean", "logprob"])
    assert x.shape == (4, 64 + 4)
    assert (x[:, :64] == blocks["mean"][:, 1]).all() and (x[:, 64:] == blocks["logprob"]).all()
    plain = features_of(tiny_llm.engine, samples.sequences, [1, 2])  # the last-token path of old verifier files
    import numpy as np

    assert np.allclose(np.asarray(plain), assemble(blocks, [1, 2], [1, 2], ["last"]), atol=1e-6)
    with pytest.raises(ValueError, match="need each sequence's answer start"):
        features_of(tiny_llm.engine, samples.sequences, [1], pooling=["last", "mean"])
    with pytest.raises(ValueError, match=r"layers \[3\] not collected"):
        assemble(blocks, [1, 2], [3], ["last"])


def test_question_folds_keep_a_question_together():
    qids = ["a", "a", "b", "c", "c", "d", "e"]
    folds = question_folds(qids, 2, seed=1)
    assert folds[0] == folds[1] and folds[3] == folds[4] and set(folds) == {0, 1}
    assert folds == question_folds(qids, 2, seed=1)


@pytest.fixture(scope="module")
def selected(tiny_llm, tiny_llama_dir):
    from lamina.engine.hidden_states import model_identity

    samples = toy_samples(tiny_llm.tokenizer, 12, 4, flip_every=3)
    blocks = feature_blocks(tiny_llm.engine, samples.sequences, samples.starts, [1, 2])
    identity = model_identity(str(tiny_llama_dir))
    configs = [([2], ["last"]), ([1, 2], ["last", "mean", "logprob"])]

    def make():
        info = VerifierInfo(str(tiny_llama_dir), identity, [], "toy", "train", seed=5)
        return fit_selected(samples, blocks, [1, 2], info, holdout=0.25, configs=configs, grid=(0.01, 1.0))

    return make, samples, blocks, configs


def test_selection_is_deterministic_and_reads_only_the_training_questions(selected):
    make, samples, blocks, configs = selected
    first, again = make(), make()
    assert first.probe == again.probe and first.info == again.info
    cv = first.info.metrics["cv"]
    assert len(cv["tried"]) == 4 and cv["chosen"]["layers"] == first.info.layers
    assert first.info.pooling == cv["chosen"]["pooling"] and first.info.questions == 9
    aurocs = [t["auroc"] for t in cv["tried"]]
    assert None not in aurocs and len(set(aurocs)) > 1, aurocs  # the choice is a real one
    best = max(cv["tried"], key=lambda t: (t["auroc"], t["selection_accuracy"]))
    assert cv["chosen"] == {"layers": best["layers"], "pooling": best["pooling"], "reg": best["reg"]}
    # the held-out questions' labels never reach the choice or the probe
    held = held_out_questions(samples.question_ids, 0.25, 5)
    flipped = Samples(list(samples.question_ids), [1 - y if q in held else y for q, y in
                                                   zip(samples.question_ids, samples.labels)],
                      samples.sequences, samples.texts, samples.starts)
    from lamina.verifiers.train import fit_selected as refit

    other = refit(flipped, blocks, [1, 2], VerifierInfo(first.info.model, first.info.model_identity, [], "toy",
                                                         "train", seed=5), 0.25, configs=configs, grid=(0.01, 1.0))
    assert other.probe == first.probe and other.info.metrics["cv"] == cv
    assert other.info.metrics["auroc"] != first.info.metrics["auroc"]  # the held-out report did see the flip
    rows = samples.rows(set(samples.question_ids) - held)
    choice, reg, _ = select_features(samples, blocks, [1, 2], rows, "logistic", 5, configs, (0.01, 1.0))
    assert (list(choice[0]), list(choice[1]), reg) == (first.info.layers, first.info.pooling, cv["chosen"]["reg"])
    x = assemble(blocks, [1, 2], [2], ["last"])[rows]
    result = cross_validate(x, [samples.labels[i] for i in rows], [samples.question_ids[i] for i in rows],
                            "logistic", 1.0, 5)
    match = [t for t in cv["tried"] if t["layers"] == [2] and t["reg"] == 1.0][0]
    assert result == {"auroc": match["auroc"], "selection_accuracy": match["selection_accuracy"]}


def test_a_pooled_verifier_scores_the_same_saved_and_through_the_reward_api(selected, tiny_llm, tiny_llama_dir,
                                                                          tmp_path):
    make, samples, blocks, _ = selected
    verifier = make()
    verifier.info.pooling = ["last", "mean", "logprob"]  # whatever was chosen: read every kind here
    verifier.info.layers = [1, 2]
    x = assemble(blocks, [1, 2], [1, 2], verifier.info.pooling)
    from lamina.rewards.learned import train_probe

    verifier.probe = train_probe(x, samples.labels, seed=5, c=0.1)
    verifier.save(tmp_path / "v.json")
    loaded = LearnedVerifier.load(tmp_path / "v.json")
    assert loaded.info.pooling == ["last", "mean", "logprob"]
    bound = loaded.bind(tiny_llm.engine, str(tiny_llama_dir))
    question = "Q0: " + QUESTION
    answers = [Response(a) for a in ANSWERS[:3]]
    via_api = asyncio.run(bound.score(question, answers))
    prompt = prompt_ids(tiny_llm.tokenizer, question)
    seqs = [prompt + tiny_llm.tokenizer.encode(a) for a in ANSWERS[:3]]
    direct = verifier.probe.predict(assemble(feature_blocks(tiny_llm.engine, seqs, [len(prompt)] * 3, [1, 2]),
                                             [1, 2], [1, 2], verifier.info.pooling))
    assert via_api == pytest.approx(direct, abs=1e-9) and len(set(via_api)) == 3
    wrong_start = bound.score_sequences(seqs, [len(prompt) + 1] * 3)  # the answer's start matters
    assert wrong_start != pytest.approx(via_api, abs=1e-9)


def test_samples_are_saved_and_read_back(tmp_path):
    samples = Samples(["q0", "q0"], [1, 0], [[1, 2, 3], [1, 2]], ["a", "b"], [2, 2])
    samples.save(tmp_path / "s.json")
    assert Samples.load(tmp_path / "s.json") == samples
    (tmp_path / "bad.json").write_text('{"question_ids": ["q"], "labels": [], "sequences": [], "starts": []}')
    with pytest.raises(ValueError, match="bad.json: question_ids, labels, sequences and starts differ"):
        Samples.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="missing.json: not a saved set of verifier samples"):
        Samples.load(tmp_path / "missing.json")


def test_extra_training_samples_are_fitted_but_never_scored(selected, tiny_llm):
    make, samples, blocks, configs = selected
    alone = make()
    other = toy_samples(tiny_llm.tokenizer, 6, 4)
    other.question_ids = [f"other-{q}" for q in other.question_ids]
    other_blocks = feature_blocks(tiny_llm.engine, other.sequences, other.starts, [1, 2])
    info = VerifierInfo(alone.info.model, alone.info.model_identity, [], "toy", "train", seed=5)
    both = fit_selected(samples, blocks, [1, 2], info, 0.25, configs=configs, grid=(0.01, 1.0),
                        extra=(other, other_blocks))
    assert both.info.questions == alone.info.questions + 6 and both.info.samples == alone.info.samples + 24
    assert both.info.metrics["extra_questions"] == 6
    assert both.info.metrics["samples"] == alone.info.metrics["samples"]  # the same held-out rows, only the target's
    import numpy as np

    from lamina.rewards.learned import train_probe
    from lamina.verifiers.train import merge_samples

    chosen = both.info.metrics["cv"]["chosen"]
    rows = samples.rows(set(samples.question_ids) - held_out_questions(samples.question_ids, 0.25, 5))
    x = np.concatenate([assemble(blocks, [1, 2], chosen["layers"], chosen["pooling"])[rows],
                        assemble(other_blocks, [1, 2], chosen["layers"], chosen["pooling"])])
    assert both.probe == train_probe(x, [samples.labels[i] for i in rows] + other.labels, 5, c=chosen["reg"])

    merged, merged_blocks = merge_samples((samples, blocks), (other, other_blocks))
    assert merged.question_ids == samples.question_ids + other.question_ids
    assert merged_blocks["mean"].shape[0] == len(merged.labels) == len(samples.labels) + len(other.labels)


def test_collect_never_pairs_freshly_drawn_samples_with_cached_states(tmp_path, monkeypatch):
    """Samples drawn again (their file removed) get their own states, not those cached for the earlier samples, even
    when there are as many of them."""
    import asyncio
    from types import SimpleNamespace

    import numpy as np

    from lamina.verifiers import train

    draws = iter([[[1, 2, 3]], [[1, 5, 6]]])

    async def sample_task(*args, **kwargs):
        return train.Samples(["q"], [1], next(draws), ["t"], [1]), SimpleNamespace(model=SimpleNamespace(layers=[0]))

    def feature_blocks(engine, sequences, starts, layers):  # the states as a function of the tokens
        value = np.float32(sum(sequences[0]))
        return {k: np.full((1, len(layers), 2) if k != "logprob" else (1, 4), value) for k in ("last", "mean", "logprob")}

    monkeypatch.setattr(train, "sample_task", sample_task)
    monkeypatch.setattr(train, "feature_blocks", feature_blocks)
    stem = tmp_path / "arith"
    _, first, _ = asyncio.run(train.collect("m", None, "train", 1, cache=stem))
    assert first["last"].flat[0] == 6
    (tmp_path / "arith.samples.json").unlink()
    drawn, second, _ = asyncio.run(train.collect("m", None, "train", 1, cache=stem))
    assert drawn.sequences == [[1, 5, 6]] and second["last"].flat[0] == 12
    again, third, _ = asyncio.run(train.collect("m", None, "train", 1, cache=stem))  # both cached: read back
    assert again.sequences == [[1, 5, 6]] and third["last"].flat[0] == 12


def _growing_task():
    """A split of three questions q0, q1, q2 (their prompts [7, i] through _patch_growth's prompt_ids)."""
    from types import SimpleNamespace

    examples = [SimpleNamespace(id=q) for q in ("q0", "q1", "q2")]
    return SimpleNamespace(name="toy", examples=lambda split, limit=None: examples[:limit],
                           messages=lambda example: example.id)


def _patch_growth(monkeypatch, calls: dict):
    """collect's drawing and reading replaced: sample_task draws 2 samples of every question after `skip` (prompt
    [7, i]), feature_blocks' rows hold each sequence's token sum; both record what they were asked."""
    from types import SimpleNamespace

    import numpy as np

    import lamina.backends.local as local
    from lamina.verifiers import train

    engine = SimpleNamespace(tokenizer=None, model=SimpleNamespace(layers=[0] * 4))

    async def sample_task(model, task, split, samples, limit=None, *, skip=0, **kwargs):
        calls["skip"] = skip
        out = Samples()
        for i, example in enumerate(task.examples(split, limit)[skip:], start=skip):
            for k in range(2):
                out.question_ids.append(example.id), out.labels.append(k), out.texts.append(str(k))
                out.sequences.append([7, i, 100 + k]), out.starts.append(2)
        return out, engine

    def feature_blocks(engine, sequences, starts, layers):
        calls.setdefault("read", []).extend(sequences)
        sums = np.asarray([float(sum(s)) for s in sequences], dtype=np.float32)
        shape = {"last": (1, len(layers), 1), "mean": (1, len(layers), 1), "logprob": (1, 4)}
        return {k: np.tile(sums.reshape(-1, *[1] * (len(v) - 1)), v) for k, v in shape.items()} if sequences else {}

    monkeypatch.setattr(train, "sample_task", sample_task)
    monkeypatch.setattr(train, "feature_blocks", feature_blocks)
    monkeypatch.setattr(train, "prompt_ids", lambda tokenizer, messages: [7, int(messages[1:])])
    monkeypatch.setattr(local, "shared_engine", lambda *a, **k: SimpleNamespace(engine=engine))


def test_collect_grows_a_smaller_cached_draw_drawing_and_reading_only_the_new_questions(tmp_path, monkeypatch):
    """A larger train draw keeps a smaller cached one's samples and states and draws and reads only the questions
    after them; the result equals drawing everything at once."""
    from lamina.verifiers import train

    task = _growing_task()
    calls: dict = {}
    _patch_growth(monkeypatch, calls)
    small, small_blocks, _ = asyncio.run(train.collect("m", task, "train", 2, 1, cache=tmp_path / "small"))
    assert small.question_ids == ["q0", "q0"] and calls["skip"] == 0
    calls.clear()
    grown, blocks, _ = asyncio.run(train.collect("m", task, "train", 2, cache=tmp_path / "big",
                                                 grow_from=tmp_path / "small"))
    assert calls["skip"] == 1 and calls["read"] == [[7, 1, 100], [7, 1, 101], [7, 2, 100], [7, 2, 101]]
    calls.clear()
    whole, whole_blocks, _ = asyncio.run(train.collect("m", task, "train", 2, cache=tmp_path / "whole"))
    assert grown == whole and calls["skip"] == 0
    for k in whole_blocks:
        assert (blocks[k] == whole_blocks[k]).all()
    again, again_blocks, _ = asyncio.run(train.collect("m", task, "train", 2, cache=tmp_path / "big"))  # cached now
    assert again == whole and (again_blocks["last"] == whole_blocks["last"]).all()


def test_collect_refuses_to_grow_a_draw_of_other_questions_before_drawing(tmp_path, monkeypatch):
    """A smaller draw whose prompts are not the split's leading questions' (another task's, another seed's) is
    refused by name before anything is drawn; so is one with more questions than the split."""
    from lamina.verifiers import train

    calls: dict = {}
    _patch_growth(monkeypatch, calls)
    Samples(["q0"], [1], [[7, 5, 100]], ["x"], [2]).save(tmp_path / "other.samples.json")  # q0's prompt was [7, 5]
    with pytest.raises(ValueError, match=r"other\.samples\.json.*'q0'.*same prompt"):
        asyncio.run(train.collect("m", _growing_task(), "train", 2, cache=tmp_path / "big",
                                  grow_from=tmp_path / "other"))
    assert "skip" not in calls and not (tmp_path / "big.samples.json").exists()
    Samples(["q0", "q1"], [1, 0], [[7, 0, 1], [7, 1, 1]], ["x", "y"], [2, 2]).save(tmp_path / "two.samples.json")
    with pytest.raises(ValueError, match=r"two\.samples\.json: holds 2 questions, more than the 1"):
        asyncio.run(train.collect("m", _growing_task(), "train", 2, 1, cache=tmp_path / "one",
                                  grow_from=tmp_path / "two"))
