"""benchmarks/verifier_scaling.py: the ORM refitted on nested subsets of a cached train split, scored on cached test
samples (synthetic feature blocks whose states carry the label, so a probe can learn it)."""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = [7, 15, 22, 30]  # the layers benchmarks/verifiers.py collects for the 30-layer SmolLM2


@pytest.fixture(scope="module")
def scaling():
    sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location("bench_verifier_scaling", ROOT / "benchmarks" / "verifier_scaling.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def blocks_for(labels: list[int], rng: np.random.Generator, signal: float) -> dict:
    n, hidden = len(labels), 4
    y = np.asarray(labels, dtype=np.float32)[:, None, None]
    last = rng.normal(size=(n, len(LAYERS), hidden)).astype(np.float32) + signal * y
    mean = rng.normal(size=(n, len(LAYERS), hidden)).astype(np.float32)
    return {"last": last, "mean": mean, "logprob": rng.normal(size=(n, 4)).astype(np.float32)}


def write_cache(scaling, cache: Path, task: str, train_questions: int, signal: float) -> None:
    """The files benchmarks/verifiers.py keeps for `task` (named by its own data_stem and test_stem)."""
    from lamina.verifiers.train import Samples, save_blocks

    args = args_for(cache, train_questions, [1.0])
    rng = np.random.default_rng(0)
    qids, labels = [], []
    for q in range(train_questions):
        right = rng.integers(1, 4)  # 1-3 right samples of 8
        qids += [f"q{q}"] * 8
        labels += [1] * right + [0] * (8 - right)
    train = Samples(question_ids=qids, labels=labels, sequences=[[1, 2, 3]] * len(qids), texts=[""] * len(qids),
                    starts=[2] * len(qids))
    stem = scaling.data_stem(args, task, train_questions)
    cache.mkdir(parents=True, exist_ok=True)
    train.save(f"{stem}.samples.json")
    save_blocks(f"{stem}.features.npz", blocks_for(labels, rng, signal), LAYERS)
    # test: per question 4 wrong samples ("5") and then 4 right ("4"): the tie goes to "5", majority is always wrong
    test_labels = [[0, 0, 0, 0, 1, 1, 1, 1] for _ in range(40)]
    drawn = scaling.Drawn(texts=[[""] * 8] * 40, keys=[["5"] * 4 + ["4"] * 4] * 40, labels=test_labels,
                          sequences=[[[1, 2, 3]] * 8] * 40, starts=[2] * 40,
                          scores={"self_certainty": [[1.0] * 8] * 40, "mean_logprob": [[-1.0] * 8] * 40})
    test = scaling.test_stem(args, task, None)
    drawn.save(Path(f"{test}.samples.json"))
    scaling.Drawn(labels=[[1]] * 10 + [[0]] * 30, keys=[["4"]] * 40).save(Path(f"{test}.greedy.json"))
    save_blocks(f"{test}.features.npz", blocks_for([y for row in test_labels for y in row], rng, signal), LAYERS)


def args_for(cache: Path, train_size: int, fractions: list[float]) -> argparse.Namespace:
    return argparse.Namespace(cache=cache, train_size={"": train_size}, fractions=fractions, samples=8,
                              temperature=0.8, seed=0)


def test_the_orm_is_refitted_on_nested_subsets_and_scored_on_the_test_samples(scaling, tmp_path, monkeypatch):
    monkeypatch.setattr(scaling, "generated_task", lambda task: True)
    write_cache(scaling, tmp_path, "units-2", 48, signal=0.5)
    result = scaling.run_task("units-2", args_for(tmp_path, 48, [0.25, 0.5, 1.0]))
    points = result["points"]
    assert [p["subset_questions"] for p in points] == [12, 24, 48]
    assert [p["train_questions"] for p in points] == [9, 18, 36]  # a quarter of each subset held out
    assert all(p["train_samples"] == 8 * p["train_questions"] for p in points)
    assert result["majority"]["accuracy"] == 0.0 and result["coverage"]["accuracy"] == 1.0
    assert result["greedy"]["accuracy"] == 0.25
    best = points[-1]
    assert best["orm"]["accuracy"] >= 0.9 and best["orm"]["gap_closed"] >= 0.9  # the states carry the label
    assert best["orm_vote"]["accuracy"] >= 0.9 and best["orm_vote"]["gap_closed"] >= 0.9
    assert best["orm"]["ci95"][0] < best["orm"]["accuracy"] <= best["orm"]["ci95"][1]
    assert best["layers"] and best["pooling"] and best["reg"] > 0
    table = scaling.table([result]).splitlines()
    assert len(table) == 2 + 3 and table[-1].startswith("| units-2 | 36 | ")
    assert table[-1].endswith("| 0.250 | 0.000 | 1.000 |")  # greedy, majority, coverage
    scaling.plot([result], tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 10_000


def test_a_missing_cache_names_the_file_and_the_command_that_writes_it(scaling, tmp_path, monkeypatch):
    monkeypatch.setattr(scaling, "generated_task", lambda task: True)
    with pytest.raises(SystemExit, match=r"units-2-train1000-n8-seed0-t0.8.samples.json: not found; run first: .*"
                                         r"benchmarks/verifiers.py --tasks units-2 --train-size 1000"):
        scaling.run_task("units-2", args_for(tmp_path, 1000, [1.0]))


def test_stale_feature_blocks_and_bad_fractions_are_refused_by_name(scaling, tmp_path, monkeypatch):
    from lamina.verifiers.train import load_blocks, save_blocks

    monkeypatch.setattr(scaling, "generated_task", lambda task: True)
    write_cache(scaling, tmp_path, "units-2", 16, signal=0.5)
    path = Path(f"{scaling.data_stem(args_for(tmp_path, 16, [1.0]), 'units-2', 16)}.features.npz")
    blocks, layers, _ = load_blocks(path)
    save_blocks(path, {k: v[:-8] for k, v in blocks.items()}, layers)  # one question's rows missing
    with pytest.raises(SystemExit, match=r"features.npz: 120 rows of features for 128 samples in .*samples.json"):
        scaling.run_task("units-2", args_for(tmp_path, 16, [1.0]))
    assert scaling.fractions("0.5, 1") == [0.5, 1.0]
    for bad in ("0,1", "1.5", "half", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="--fractions"):
            scaling.fractions(bad)
