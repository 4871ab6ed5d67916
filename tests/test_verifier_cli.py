"""`lamina verifier train` and `lamina verifier eval` end to end on the tiny random model (a jsonl task whose scorer
labels its samples both ways), and their bad input: one clear line, before any sampling."""
from __future__ import annotations

import json

import pytest

from lamina.cli import main

ROWS = 12


@pytest.fixture
def task_file(tmp_path):
    """A task whose answers are right when they hold the letter "e" (the regex extractor finds it: the tiny model's
    random words hold one now and then). Questions 0-7 are its train split, 8-11 its dev split."""
    rows = [{"id": f"q{i}", "question": f"Say a word {i}.", "reference": "e",
             "split": "train" if i < 8 else "dev"} for i in range(ROWS)]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    path = tmp_path / "letters.yaml"
    path.write_text("name: letters\nsource: {type: jsonl, path: data.jsonl}\nscorer: {type: exact, extract: regex, pattern: '(e)'}\nmax_tokens: 3\n")
    return path


def test_train_then_eval_on_the_tiny_model(tiny_llama_dir, task_file, tmp_path, capsys):
    from lamina.backends.local import shutdown_all
    from lamina.engine.hidden_states import model_identity
    from lamina.rewards.learned import LearnedVerifier

    out = tmp_path / "not" / "yet" / "v.json"  # its folder is created
    try:
        code = main(["verifier", "train", "--model", str(tiny_llama_dir), "--task", str(task_file), "--samples", "4",
                     "--seed", "3", "--no-select", "--layers", "1,2", "--out", str(out), "--json"])
        captured = capsys.readouterr()
        printed = captured.out
        assert code == 0, captured.err
        verifier = LearnedVerifier.load(out)
        info = verifier.info
        # 3/4 of the 8 train questions fitted, 1/4 held out
        assert (info.task, info.split, info.layers, info.samples, info.questions) == ("letters", "train", [1, 2],
                                                                                     24, 6)
        assert info.model_identity == model_identity(str(tiny_llama_dir))
        held = json.loads(printed[printed.index("{"):])
        # seeds derive from the component's identity, which holds the model's path: each pytest session's tmp path
        # draws other samples, and some leave the 2 held-out questions one-sided (AUROC None)
        assert held == info.metrics and (held["questions"], held["samples"]) == (2, 8)
        assert held["auroc"] is None or 0.0 <= held["auroc"] <= 1.0
        code = main(["verifier", "eval", str(out), "--task", str(task_file), "--samples", "4", "--seed", "3",
                     "--json"])
        evaluated = json.loads(capsys.readouterr().out)
    finally:
        shutdown_all()
    assert code == 0
    assert evaluated["questions"] == 4 and evaluated["samples"] == 16
    assert {"auroc", "ece", "selection_accuracy", "coverage"} <= set(evaluated)
    assert 0.0 <= evaluated["selection_accuracy"] <= evaluated["coverage"] <= 1.0


def test_a_verifier_file_without_its_probe_is_a_clear_error(tiny_llama_dir, tmp_path, capsys):
    from lamina.rewards.learned import FORMAT

    path = tmp_path / "v.json"
    path.write_text(json.dumps({"format": FORMAT, "kind": "orm"}))
    code = main(["verifier", "eval", str(path), "--task", "arith-1"])
    err = capsys.readouterr().err
    assert code == 2 and str(path) in err and "probe" in err and "Traceback" not in err


def test_bad_out_and_layers_are_refused_before_sampling(tiny_llama_dir, task_file, tmp_path, capsys, monkeypatch):
    import lamina.verifiers.train as train

    async def never(*args, **kwargs):
        raise AssertionError("sampled before refusing")

    monkeypatch.setattr(train, "sample_task", never)
    base = ["verifier", "train", "--model", str(tiny_llama_dir), "--task", str(task_file), "--samples", "2"]
    assert main(base + ["--out", str(tmp_path)]) == 2
    assert "a folder" in capsys.readouterr().err
    try:
        assert main(base + ["--layers", "1,7", "--out", str(tmp_path / "v.json")]) == 2
    finally:
        from lamina.backends.local import shutdown_all

        shutdown_all()
    err = capsys.readouterr().err
    assert "--layers" in err and "layer 7 out of range for a model with 2 layers" in err
    assert not (tmp_path / "v.json").exists()
    for layers in ("1,1", ""):  # a layer twice; an empty list (was: the default, silently)
        assert main(base + ["--layers", layers, "--out", str(tmp_path / "v.json")]) == 2
        assert "--layers" in capsys.readouterr().err
    # /proc's folders refuse new files even to root, which os.access allows: a real write finds it
    assert main(base + ["--out", "/proc/self/v.json"]) == 2
    assert "cannot write a file in /proc/self" in capsys.readouterr().err


def test_a_train_size_beyond_the_family_says_how_many_questions_it_has(tiny_llama_dir, tmp_path, capsys,
                                                                        monkeypatch):
    import lamina.verifiers.train as train
    from lamina.tasks.task import load_task
    from lamina.verifiers.train import grow_train

    async def stop(*args, **kwargs):
        raise RuntimeError("stop: the note comes before any sampling")

    monkeypatch.setattr(train, "sample_task", stop)
    task = load_task("arith-1")
    grow_train(task, 5000)
    held = len(task.examples("train"))
    assert held < 1000
    with pytest.raises(RuntimeError, match="stop"):
        main(["verifier", "train", "--model", str(tiny_llama_dir), "--task", "arith-1", "--train-size", "1000",
              "--no-select", "--out", str(tmp_path / "v.json")])
    assert f"arith-1 has {held} distinct train questions, fewer than --train-size 1000" in capsys.readouterr().err


@pytest.fixture
def tiny_verifier_file(tiny_llm, tiny_llama_dir, tmp_path):
    """A verifier of the tiny model fitted on toy samples (no sampling), saved."""
    from lamina.engine.hidden_states import model_identity
    from lamina.rewards.learned import VerifierInfo, features_of
    from lamina.verifiers.train import fit

    from tests.test_verifiers import toy_samples

    samples = toy_samples(tiny_llm.tokenizer)
    info = VerifierInfo(str(tiny_llama_dir), model_identity(str(tiny_llama_dir)), [1, 2], "toy", "train", seed=3)
    path = tmp_path / "tiny.json"
    fit(samples, features_of(tiny_llm.engine, samples.sequences, [1, 2]), info, holdout=0.34).save(path)
    return path


def test_eval_refuses_a_spec_whose_verifier_is_missing_or_of_another_model(tiny_verifier_file, tiny_llama_dir,
                                                                           task_file, tmp_path, capsys):
    """`lamina eval` (and `lamina run`) check a spec's verifier files before any example runs: a missing file or one
    trained on none of the spec's models is one line and exit code 2, and nothing is stored as an answer, so the
    same run, fixed, starts clean."""
    import sqlite3

    from lamina.backends.local import shutdown_all
    from lamina.rewards.learned import LearnedVerifier

    def spec(path):
        arch = tmp_path / "arch.yaml"
        arch.write_text(json.dumps({"name": "weighted", "models": {"m": {"model": str(tiny_llama_dir),
                                                                         "params": {"max_tokens": 3}}},
                                    "layers": [[{"type": "generate", "model": "m", "samples": 2}],
                                               [{"type": "vote", "weights": "verifier", "verifier": str(path)}]]}))
        return arch

    store = tmp_path / "run.sqlite"
    evaluate = ["eval", "--task", str(task_file), "--split", "dev", "--limit", "2", "--out", str(store),
                "--no-progress"]
    try:
        assert main(["eval", "--arch", str(spec(tmp_path / "nope.json")), *evaluate[1:]]) == 2
        err = capsys.readouterr().err
        assert "verifier" in err and "nope.json: no such file" in err and "Traceback" not in err
        assert main(["run", "--arch", str(tmp_path / "arch.yaml"), "hello"]) == 2
        assert "nope.json: no such file" in capsys.readouterr().err
        from lamina.rewards.learned import VerifierError
        from lamina.server.cli import _load_architectures

        with pytest.raises(VerifierError, match="nope.json: no such file"):  # lamina serve: before it starts
            _load_architectures([str(tmp_path / "arch.yaml")], "none")
        foreign = LearnedVerifier.load(tiny_verifier_file)
        foreign.info.model_identity = "0" * 32
        foreign.save(tmp_path / "foreign.json")
        assert main(["eval", "--arch", str(spec(tmp_path / "foreign.json")), *evaluate[1:]]) == 2
        err = capsys.readouterr().err
        assert "none of the spec's local models is it" in err and "Traceback" not in err
        if store.exists():
            with sqlite3.connect(store) as db:
                tables = {r[0] for r in db.execute("select name from sqlite_master where type='table'")}
                rows = db.execute("select count(*) from results").fetchone()[0] if "results" in tables else 0
            assert rows == 0
        assert main(["eval", "--arch", str(spec(tiny_verifier_file)), *evaluate[1:], "--json"]) == 0
        done = json.loads(capsys.readouterr().out)
    finally:
        shutdown_all()
    assert done["examples"] == 2 and done["errors"] == 0
