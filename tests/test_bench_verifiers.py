"""benchmarks/verifiers.py's option parsing and the reuse of a previous run's program-aided rows."""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_verifiers", ROOT / "benchmarks" / "verifiers.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_train_with_parses_and_refuses_a_bad_part(bench):
    assert bench.train_with("units-1=units-2+units-3, units-2=units-1") == {"units-1": ["units-2", "units-3"],
                                                                          "units-2": ["units-1"]}
    assert bench.train_with(None) == {}
    with pytest.raises(argparse.ArgumentTypeError, match="'units-1' is not TASK=OTHER"):
        bench.train_with("units-1")


def test_program_rows_are_reused_only_from_the_same_draw(bench, tmp_path):
    tag = bench.program_tag()
    rows = {"program_vote": {"accuracy": 0.9, "program_prompt": tag},
            "program_coverage": {"accuracy": 0.97, "program_prompt": tag}, "greedy": {"accuracy": 0.3}}
    record = {"samples": 8, "temperature": 0.8, "seed": 0,
              "tasks": [{"task": "arith-1", "questions": 156, "methods": rows}]}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(record))
    args = argparse.Namespace(samples=8, temperature=0.8, seed=0)
    reused = bench.reused_program_rows(path, "arith-1", 156, args)
    assert set(reused) == {"program_vote", "program_coverage"} and reused["program_vote"]["accuracy"] == 0.9
    assert reused["program_vote"]["reused_from"] == str(path)
    assert bench.reused_program_rows(path, "arith-1", 80, args) == {}  # other questions
    assert bench.reused_program_rows(path, "units-1", 156, args) == {}
    assert bench.reused_program_rows(path, "arith-1", 156, argparse.Namespace(samples=8, temperature=0.8,
                                                                               seed=1)) == {}
    assert bench.reused_program_rows(None, "arith-1", 156, args) == {}
    rows["program_vote"]["program_prompt"] = "0123abcd"  # drawn with another prompt
    path.write_text(json.dumps(record))
    assert bench.reused_program_rows(path, "arith-1", 156, args) == {}


def test_test_draws_are_kept_and_read_back_without_drawing_again(bench, tmp_path, monkeypatch):
    import asyncio

    drawn = bench.Drawn(texts=[["4", "5"]], keys=[["4", "5"]], labels=[[1, 0]],
                        scores={"self_certainty": [[2.0, 1.5]], "mean_logprob": [[-0.1, -0.9]]},
                        sequences=[[[1, 2, 3], [1, 2, 4]]], starts=[2], tokens=9, seconds=0.5)
    calls = []

    async def fake_draw(spec, task, examples, scorer, desc):
        calls.append(desc)
        return drawn, None

    monkeypatch.setattr(bench, "draw", fake_draw)
    path = tmp_path / "arith-1-test.samples.json"
    first = asyncio.run(bench.draw_cached({}, None, [], None, "first", path))
    again = asyncio.run(bench.draw_cached({}, None, [], None, "again", path))
    assert calls == ["first"] and path.exists()
    assert again == first == drawn  # every field, scores and measured seconds included


def test_targets_measure_a_verifier_of_programs_against_the_programs_gap(bench):
    acc = {"greedy": 0.10, "majority": 0.05, "orm": 0.16, "coverage": 0.25, "program_vote": 0.30,
           "program_orm": 0.40, "program_orm_vote": 0.45, "program_coverage": 0.50}
    t = bench.targets({"methods": {m: {"accuracy": a} for m, a in acc.items()}})
    assert t["best_selector"] == "program_orm_vote" and t["beats_greedy_by_10"]
    assert t["gap_closed"]["orm"] == pytest.approx(0.55)  # (0.16 - 0.05) / (0.25 - 0.05)
    assert t["gap_closed"]["program_orm"] == pytest.approx(0.5)  # (0.40 - 0.30) / (0.50 - 0.30)
    assert t["gap_closed"]["program_orm_vote"] == pytest.approx(0.75)
    assert t["orm_closes_half"] and t["program_orm_closes_half"]
    acc.update(program_orm=0.39, program_orm_vote=0.45)  # judged on the best-of-8 pick, the vote only reported
    t = bench.targets({"methods": {m: {"accuracy": a} for m, a in acc.items()}})
    assert not t["program_orm_closes_half"] and t["gap_closed"]["program_orm_vote"] == pytest.approx(0.75)
    acc.update(orm=0.10, program_orm=0.32, program_orm_vote=0.32)
    t = bench.targets({"methods": {m: {"accuracy": a} for m, a in acc.items()}})
    assert not t["orm_closes_half"] and not t["program_orm_closes_half"] and t["best_selector"] == "program_orm"


def test_program_tag_changes_with_the_program_prompt(bench, monkeypatch):
    tag = bench.program_tag()
    assert len(tag) == 8
    monkeypatch.setattr(bench, "PROGRAM_EXAMPLES", bench.PROGRAM_EXAMPLES[:1])
    assert bench.program_tag() != tag


def test_keep_merges_a_previous_run_task_by_task(bench, tmp_path):
    old = {"cpu": "old CPU", "threads": 1, "samples": 8, "temperature": 0.8, "seed": 0,
           "programs_redrawn": {"cpu": "old CPU", "threads": 2},
           "tasks": [{"task": "arith-1", "methods": {"greedy": {"accuracy": 0.3}, "program_vote": {"accuracy": 0.9}}},
                     {"task": "units-2", "methods": {"greedy": {"accuracy": 0.05}}},
                     {"task": "code-3", "methods": {}, "measured": {"cpu": "older CPU", "threads": 4},
                      "reused_from": "older.json"}]}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    now = [{"task": "units-2", "methods": {"greedy": {"accuracy": 0.06}}, "measured": {"cpu": "new", "threads": 2}},
           {"task": "arith-3", "methods": {}, "measured": {"cpu": "new", "threads": 2}}]
    merged = bench.kept(old, path, now)
    assert [r["task"] for r in merged] == ["arith-1", "units-2", "code-3", "arith-3"]  # OLD's order, new ones last
    assert merged[1] is now[0] and merged[3] is now[1]  # a task run now replaces its old result
    assert merged[0]["measured"] == {"cpu": "old CPU", "threads": 1,
                                     "programs_redrawn": {"cpu": "old CPU", "threads": 2}}
    assert merged[0]["reused_from"] == str(path)
    assert merged[2]["measured"] == {"cpu": "older CPU", "threads": 4} and merged[2]["reused_from"] == "older.json"


def test_keep_refuses_a_run_drawn_otherwise(bench, tmp_path, capsys):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"samples": 8, "temperature": 0.8, "seed": 1, "tasks": []}))
    parser = argparse.ArgumentParser(prog="verifiers.py")
    args = argparse.Namespace(samples=8, temperature=0.8, seed=0)
    with pytest.raises(SystemExit):
        bench.previous(path, args, parser, "--keep")
    err = capsys.readouterr().err
    assert f"--keep {path}" in err and "8/0.8/1, not 8/0.8/0" in err
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SystemExit):
        bench.previous(tmp_path / "bad.json", args, parser, "--keep")
    assert "not a results JSON" in capsys.readouterr().err


def test_a_larger_train_draw_grows_the_largest_smaller_one_of_the_same_kind(bench, tmp_path):
    """smaller_draw: the largest cached train draw below the size asked, of the same samples, seed, temperature and
    technique; none for "all", or when only other draws are cached."""
    args = argparse.Namespace(samples=8, temperature=0.8, seed=0, cache=tmp_path)
    for name in ("arith-3-train200-n8-seed0-t0.8", "arith-3-train1000-n8-seed0-t0.8",
                 "arith-3-train3000-n8-seed0-t0.8", "arith-3-train1500-n16-seed0-t0.8",
                 "arith-3-train1600-n8-seed1-t0.8", "arith-3-train1700-n8-seed0-t0.8-program-abc",
                 "arith-30-train1800-n8-seed0-t0.8"):
        (tmp_path / f"{name}.samples.json").write_text("{}")
    assert bench.smaller_draw(args, "arith-3", 2000) == tmp_path / "arith-3-train1000-n8-seed0-t0.8"
    assert bench.smaller_draw(args, "arith-3", 1000) == tmp_path / "arith-3-train200-n8-seed0-t0.8"
    assert bench.smaller_draw(args, "arith-3", 2000, "-program-abc") == (
        tmp_path / "arith-3-train1700-n8-seed0-t0.8-program-abc")
    assert bench.smaller_draw(args, "arith-3", 200) is None
    assert bench.smaller_draw(args, "arith-3", "all") is None
    assert bench.smaller_draw(args, "units-1", 2000) is None


@pytest.mark.parametrize("script", ["verifiers.py", "verifier_scaling.py"])
def test_the_benchmark_runs_as_the_readme_calls_it(script, tmp_path):
    """`python benchmarks/SCRIPT` from anywhere (not only as a module from the repository root): it imports its
    sibling report module and answers --help."""
    import subprocess

    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout


def test_train_samples_name_the_train_draws_and_the_test_draws_keep_their_own(bench, tmp_path):
    """--samples 32 --train-samples 8: the train draws (and the verifiers fitted on them) are those cached with 8
    per question, the test draws are 32 per question; without --train-samples both follow --samples."""
    apart = argparse.Namespace(samples=32, train_samples=8, temperature=0.8, seed=0, cache=tmp_path)
    assert bench.data_stem(apart, "units-2", 1000).name == "units-2-train1000-n8-seed0-t0.8"
    assert bench.test_stem(apart, "units-2", None).name == "units-2-test-limitall-n32-t0.8-seed0"
    same = argparse.Namespace(samples=32, temperature=0.8, seed=0, cache=tmp_path)
    assert bench.data_stem(same, "units-2", 1000).name == "units-2-train1000-n32-seed0-t0.8"


def test_a_run_without_learned_verifiers_judges_only_the_best_selector(bench, tmp_path):
    """--no-orm: no orm row, so the learned verifier's target is not judged (None, printed '-'), not called unmet;
    the best selector still is; --no-orm with an option that trains a verifier is refused before anything runs."""
    acc = {"greedy": 0.25, "majority": 0.15, "public_tests": 0.37, "coverage": 0.40}
    result = {"task": "code-3", "methods": {m: {"accuracy": a} for m, a in acc.items()}}
    t = bench.targets(result)
    assert t["best_selector"] == "public_tests" and t["beats_greedy_by_10"]
    assert t["orm_closes_half"] is None and t["gap_closed"] == {}
    line = bench.target_lines([{**result, "targets": t}])[-1]
    assert "(met)" in line and "orm: -" in line
    import subprocess

    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "verifiers.py"), "--no-orm", "--mlp"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--no-orm trains no verifier" in done.stderr


def test_no_orm_reads_no_hidden_states_and_writes_apart(bench, tmp_path, monkeypatch):
    """With --no-orm (no probes) a task's rows come from the draws alone: the test samples' hidden states are never
    computed (test_blocks is not called) and there is no orm row; its default output is verifiers-noorm."""
    import asyncio

    drawn = bench.Drawn(texts=[["4", "5"]], keys=[["4", "5"]], labels=[[0, 1]],
                        scores={"self_certainty": [[2.0, 1.5]], "mean_logprob": [[-0.9, -0.1]]},
                        sequences=[[[1, 2, 3], [1, 2, 4]]], starts=[2], tokens=9, seconds=0.5)

    async def fake_draw(spec, task, examples, scorer, desc):
        return drawn, None

    def no_states(*_):
        raise AssertionError("hidden states computed without a learned verifier")

    monkeypatch.setattr(bench, "draw", fake_draw)
    monkeypatch.setattr(bench, "test_blocks", no_states)
    args = argparse.Namespace(train_size={"": 1000}, limit={"": 1}, train_with={}, probes=[], samples=2,
                              train_samples=2, temperature=0.8, seed=0, threads=1, cache=tmp_path, no_program=True,
                              program_from=None)
    result = asyncio.run(bench.run_task("arith-1", args))
    methods = result["methods"]
    assert "orm" not in methods and result["orms"] == {}
    assert methods["mean_logprob"]["accuracy"] == 1.0 and methods["coverage"]["accuracy"] == 1.0
    assert bench.default_out(True).name == "verifiers-noorm" and bench.default_out(False).name == "verifiers"
