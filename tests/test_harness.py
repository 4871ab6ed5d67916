"""Eval harness: run store, statistics, concurrent evaluation on a tiny real model, kill -9 resume, report."""
from __future__ import annotations

import asyncio
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lamina.backends.base import Backend, Completion, Completions
from lamina.errors import SpecError
from lamina.eval.harness import EvalOptions, evaluate
from lamina.eval.judge import JUDGE_PROMPT
from lamina.eval.scorers import Scorer
from lamina.eval.report import format_table
from lamina.eval.stats import pass_at_k, summarize, wilson_interval
from lamina.eval.store import ResultRow, RunStore
from lamina.tasks.scorer_spec import ScorerSpec
from lamina.tasks.task import Example, load_task
from tests import sqlite_rows


def test_summary_counts_cost_and_spent_apart():
    live = {"calls": 2, "cached_calls": 0, "prompt_tokens": 30, "completion_tokens": 10, "spent_tokens": 40}
    replay = {"calls": 0, "cached_calls": 2, "prompt_tokens": 30, "completion_tokens": 10, "spent_tokens": 0}
    old = {"calls": 2, "prompt_tokens": 30, "completion_tokens": 10}  # a store from before cost and spent split
    rows = [ResultRow(f"e{i}", i, "p", "p", "r", 1.0, usage=u) for i, u in enumerate((live, replay, old))]
    s = summarize("run", rows)
    assert (s.calls, s.tokens, s.spent_tokens) == (2.0, 40.0, (40 + 0 + 40) / 3)
    assert "spent/ex" in format_table([s]) and f"{s.spent_tokens:.1f}" in format_table([s])


def test_wilson_interval_known_values():
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson_interval(5, 10)
    assert (low, high) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    assert wilson_interval(0, 0) == (0.0, 0.0)


@pytest.mark.parametrize("n, c, k", [(10, 3, 1), (10, 3, 4), (16, 1, 8), (5, 0, 2), (4, 4, 4), (8, 5, 4)])
def test_pass_at_k_matches_combinatorial_definition(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k))


def test_summary_with_samples_and_components():
    rows = [ResultRow(f"e{i}", i, "p", "p", "r", float(i < 2), sample_scores=[1.0, 0.0, 0.0, float(i == 0)],
                      usage={"calls": 2, "prompt_tokens": 10, "completion_tokens": 30,
                             "by_component": {"gen": {"calls": 1, "prompt_tokens": 10, "completion_tokens": 30}}},
                      seconds=1.0) for i in range(4)]
    s = summarize("x", rows)
    assert (s.examples, s.accuracy, s.calls, s.tokens, s.samples) == (4, 0.5, 2.0, 40.0, 4)
    assert s.pass_at[1] == pytest.approx((0.5 + 0.25 * 3) / 4) and s.pass_at[4] == 1.0
    assert s.by_component["gen"]["completion_tokens"] == 30.0


def test_pass_at_k_survives_an_errored_example():
    rows = [ResultRow(f"e{i}", i, "p", "p", "r", float(i == 0), sample_scores=[1.0, float(i == 0)]) for i in range(3)]
    rows.append(ResultRow("e3", 3, "", None, "r", 0.0, error="BudgetError: over budget"))  # no samples
    s = summarize("x", rows)
    assert (s.examples, s.errors, s.samples, s.pass_at_examples) == (4, 1, 2, 3)
    assert s.pass_at[1] == pytest.approx((1.0 + 0.5 + 0.5) / 3) and s.pass_at[2] == 1.0
    assert s.to_dict()["pass_at_k_examples"] == 3
    assert summarize("y", [rows[3]]).pass_at == {}


def test_resume_with_a_different_scorer_is_refused(tmp_path):
    from types import SimpleNamespace

    from lamina.eval.harness import run_config

    spec = SimpleNamespace(model_dump_json=lambda: "{}", model_dump=lambda mode: {}, seed=0)
    arch, task, options = SimpleNamespace(name="a", spec=spec), load_task("arith-1"), EvalOptions(limit=2)
    with RunStore(tmp_path / "r.sqlite") as store:
        assert store.begin(run_config(arch, task, options)) == 1
        assert store.begin(run_config(arch, task, options)) == 2  # same scorer: resumes
        task.scorer.kind, task.scorer.options = "judge", {"baseline": "base.sqlite", "model": "default"}
        with pytest.raises(SpecError, match="holds a different run .*scorer: stored .*'type': 'numeric'.*'judge'"):
            store.begin(run_config(arch, task, options))
    with RunStore(tmp_path / "j.sqlite") as store:
        assert store.begin(run_config(arch, task, options)) == 1
        task.scorer.options = {"baseline": "base.sqlite", "model": "other-judge"}
        with pytest.raises(SpecError, match="scorer: .*'default'.* vs now .*'other-judge'"):
            store.begin(run_config(arch, task, options))


def test_store_records_attempts_and_refuses_a_different_run(tmp_path):
    path = tmp_path / "r.sqlite"
    config = {"task": "t", "task_hash": "h", "split": "dev", "arch_hash": "a", "seed": 0}
    with RunStore(path) as store:
        assert store.begin(config) == 1
        store.add(ResultRow("e1", 0, "pred", "1", "1", 1.0, usage={"calls": 1}, trace=[{"event": "call"}]))
    with RunStore(path) as store:
        assert store.begin({**config, "limit": 5}) == 2
        assert store.finished_ids() == {"e1"}
        row = store.rows(with_trace=True)[0]
        assert (row.prediction, row.score, row.usage, row.trace) == ("pred", 1.0, {"calls": 1}, [{"event": "call"}])
        with pytest.raises(SpecError, match="holds a different run .*arch_hash"):
            store.begin({**config, "arch_hash": "other"})
    with pytest.raises(SpecError, match="no such run file"):
        RunStore.open_existing(tmp_path / "nope.sqlite")


@pytest.fixture(scope="module")
def tiny_arch_spec(tiny_llama_dir):
    return {"name": "tiny-sample3", "models": {"m": {"model": str(tiny_llama_dir)}},
            "layers": [[{"type": "generate", "model": "m", "samples": 3, "temperature": 1.0, "max_tokens": 8}]]}


def test_evaluate_concurrently_then_resume_without_recomputing(tmp_path, tiny_arch_spec):
    from lamina.architecture import Architecture

    task = load_task("arith-1")

    async def run(limit):
        arch = Architecture.from_spec(tiny_arch_spec, cache=False)
        try:
            with RunStore(tmp_path / "run.sqlite") as store:
                return await evaluate(arch, task, store, EvalOptions(limit=limit, concurrency=2, progress=False))
        finally:
            await arch.aclose()

    summary, failures = asyncio.run(run(3))
    assert failures == [] and summary.examples == 3 and summary.samples == 3 and set(summary.pass_at) == {1, 2, 3}
    assert summary.calls == 1.0 and summary.completion_tokens > 0
    with RunStore(tmp_path / "run.sqlite") as store:
        first = {r.example_id: (r.finished_at, r.attempt) for r in store.rows()}
        assert all(len(r.sample_scores) == 3 and r.trace == [] for r in store.rows())
        assert all(len(r.trace) >= 2 for r in store.rows(with_trace=True))
    summary, _ = asyncio.run(run(5))
    assert summary.examples == 5
    with RunStore(tmp_path / "run.sqlite") as store:
        rows = store.rows()
        assert {r.example_id: (r.finished_at, r.attempt) for r in rows if r.example_id in first} == first
        assert sorted(r.attempt for r in rows) == [1, 1, 1, 2, 2]
        assert [r.idx for r in rows] == [0, 1, 2, 3, 4]


def _rows(path: Path) -> list[tuple]:
    return sqlite_rows.rows(path, "SELECT example_id, finished_at, attempt, prediction FROM results ORDER BY idx")


def test_kill_9_mid_run_then_rerun_finishes_without_redoing(tmp_path, tiny_llama_dir):
    out = tmp_path / "killed.sqlite"
    cmd = [sys.executable, "-m", "lamina", "eval", "--model", str(tiny_llama_dir), "--task", "arith-2", "--limit", "12",
           "--concurrency", "1", "--max-tokens", "48", "--out", str(out), "--no-progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 120
    while len(_rows(out)) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    before = _rows(out)
    assert 3 <= len(before) < 12, "the run should have been killed mid-way"
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    after = _rows(out)
    assert len(after) == 12 and len({r[0] for r in after}) == 12
    kept = {r[0]: r for r in after}
    assert all(kept[r[0]] == r for r in before), "a finished example was recomputed"
    assert sum(r[2] == 2 for r in after) == 12 - len(before)
    assert "accuracy" in done.stdout and " 12 " in done.stdout


def test_report_cli_prints_table_and_writes_png(tmp_path):
    from lamina.cli import main

    for name, scores in (("a", [1, 0, 0, 1]), ("b", [1, 1, 1, 0])):
        with RunStore(tmp_path / f"{name}.sqlite") as store:
            store.begin({"task": "t", "split": "dev", "arch": f"arch-{name}"})
            for i, s in enumerate(scores):
                store.add(ResultRow(f"e{i}", i, "x", "x", "x", float(s),
                                    usage={"calls": 1, "prompt_tokens": 10 * (i + 1), "completion_tokens": 5}))
    png = tmp_path / "plot.png"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["report", str(tmp_path), "--plot", str(png)]) == 0
    text = buf.getvalue()
    assert "arch-a [t/dev]" in text and "0.500" in text and "0.750" in text and "accuracy" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["report", str(tmp_path / "missing.sqlite"), "--plot", str(png)]) == 2


class ScriptedJudge(Backend):
    """A judge with canned verdicts: for the baseline answer named in the prompt, the reply when the candidate is
    Answer A, then when it is Answer B. Records every prompt."""

    kind = "scripted"

    def __init__(self, verdicts: dict[str, tuple[str, str]]) -> None:
        super().__init__("scripted-judge")
        self.verdicts, self.prompts = verdicts, []

    async def _complete(self, messages, prompt, params) -> Completions:
        text = messages[-1]["content"]
        self.prompts.append(text)
        base = next(b for b in self.verdicts if f"Answer A:\n{b}\n" in text or f"Answer B:\n{b}\n" in text)
        candidate_first = f"Answer B:\n{base}\n" in text
        return Completions([Completion(self.verdicts[base][0 if candidate_first else 1], 1)], prompt_tokens=1)


def test_judge_scorer_scores_each_verdict_pair(tmp_path, tiny_llama_dir):
    from lamina.architecture import Architecture

    task = load_task("arith-1")
    examples = task.examples(limit=4)
    with RunStore(tmp_path / "base.sqlite") as store:
        store.begin({"task": task.name, "split": "test", "arch": "base"})
        for i, ex in enumerate(examples):
            store.add(ResultRow(ex.id, i, f"base-{i}", None, ex.reference, 0.0))
    task.scorer = ScorerSpec("judge", task.scorer.extract, {"baseline": str(tmp_path / "base.sqlite"), "model": "j"})
    # win both orders, lose both, position bias (A twice), tie then unparseable
    judge = ScriptedJudge({"base-0": ("A", "B"), "base-1": ("B", "A"), "base-2": ("A", "A"), "base-3": ("tie", "hmm")})
    arch = Architecture.single_model(str(tiny_llama_dir), cache=False, max_tokens=6, temperature=0.0)

    async def run():
        try:
            with RunStore(tmp_path / "judged.sqlite") as store:
                return await evaluate(arch, task, store, EvalOptions(limit=4, progress=False),
                                      scorer=Scorer.from_spec(task.scorer, judge=judge))
        finally:
            await arch.aclose()

    summary, failures = asyncio.run(run())
    assert failures == [] and summary.examples == 4 and summary.accuracy == 0.5
    with RunStore(tmp_path / "judged.sqlite") as store:
        rows = {r.example_id: r for r in store.rows()}
    got = [(rows[ex.id].score, rows[ex.id].detail.split(" (")[0]) for ex in examples]
    assert got == [(1.0, "verdicts=['A', 'B']"), (0.0, "verdicts=['B', 'A']"), (0.5, "verdicts=['A', 'A']"),
                   (0.5, "verdicts=['tie', None]")]
    ex, row = examples[0], rows[examples[0].id]
    question = task.messages(ex)[-1]["content"]
    both = [p for p in judge.prompts if "base-0" in p]
    assert both == [JUDGE_PROMPT.format(question=question, a=row.prediction, b="base-0"),
                    JUDGE_PROMPT.format(question=question, a="base-0", b=row.prediction)]
    assert len(judge.prompts) == 8


def test_judge_scorer_refuses_a_missing_baseline_or_example(tmp_path):
    missing = Scorer.from_spec(ScorerSpec("judge", "auto", {"baseline": str(tmp_path / "missing.sqlite")}))
    with pytest.raises(SpecError, match="baseline run .*missing.sqlite' not found"):
        missing.prepare()
    with RunStore(tmp_path / "base.sqlite") as store:
        store.begin({"task": "t", "split": "test", "arch": "base"})
        store.add(ResultRow("e0", 0, "base-0", None, "1", 0.0))
    scorer = Scorer.from_spec(ScorerSpec("judge", "auto", {"baseline": str(tmp_path / "base.sqlite")}),
                              judge=ScriptedJudge({}))
    with pytest.raises(SpecError, match="has no answer for example 'e9'"):
        asyncio.run(scorer.score("x", Example("e9", {}, "1")))
