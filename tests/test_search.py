"""Architecture search over an OpenAI-compatible stub whose best architecture is known (tests/search_stub.py):
spaces, strategies, successive halving, the held-out test split, kill -9 resume, workers and a PostgreSQL study."""
from __future__ import annotations

import collections
import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

optuna = pytest.importorskip("optuna")

from lamina.cli import main  # noqa: E402
from lamina.errors import SpecError  # noqa: E402
from lamina.eval.store import RunStore  # noqa: E402
from lamina.search.driver import SearchJob, run_search  # noqa: E402
from lamina.search.report import load_study, report  # noqa: E402
from lamina.search.space import load_space, parse_space  # noqa: E402
from lamina.search.study import SearchSettings, create_or_load, default_storage, open_storage  # noqa: E402
from lamina.spec import COMPONENT_TYPES  # noqa: E402
from lamina.tasks.task import load_task  # noqa: E402
from tests import sqlite_rows  # noqa: E402
from tests.search_stub import AnswerStub, stub_space, task_answers  # noqa: E402

TASK = "arith-1"
BEST = [[{"type": "generate", "samples": 3, "temperature": 0.3}], [{"type": "vote", "method": "majority"}]]


@pytest.fixture(scope="module")
def answers():
    return task_answers(TASK)


@pytest.fixture(scope="module")
def questions():
    task = load_task(TASK)
    return {split: {task.messages(e)[-1]["content"] for e in task.examples(split)} for split in ("dev", "test")}


@pytest.fixture()
def stub(answers):
    with AnswerStub(answers) as server:
        yield server


def search(tmp_path: Path, stub: AnswerStub, strategy: str, trials: int = 12, name: str | None = None,
           rungs=(4, 12), **job) -> object:
    space = parse_space(stub_space(stub.base_url), "stub-space")
    settings = SearchSettings(TASK, space.raw, space.source, "dev", strategy, list(rungs), seed=0, threads=None)
    return run_search(SearchJob(name or strategy, settings, trials, root=str(tmp_path), progress=False, **job))


def layers_of(trial) -> list:
    return [[{k: v for k, v in comp.items()}] for (comp,) in trial.user_attrs["spec"]["layers"]]


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


# ---- spaces ------------------------------------------------------------------------------------------------------
BAD_SPACES = [
    ({"components": {"vote": {"method": ["majority", "plurality"]}}}, "components.vote.method", "'plurality'"),
    ({"components": {"generate": {"temperature": {"low": 1.0, "high": 0.5}}}}, "components.generate.temperature",
     "low 1.0 is above high 0.5"),
    ({"components": {"generate": {"samplez": [1, 2]}}}, "components.generate.samplez", "no field 'samplez'"),
    ({"components": {"generate": {"model": ["m", "nope"]}}}, "components.generate.model", "'nope'"),
    ({"components": {"generate": {"top_p": [0.5, 1.5]}}}, "components.generate.top_p", "1.5"),
    ({"stacks": [["generate", "magic"]]}, "stacks[0].layers[1]", "'magic'"),
    ({"stacks": [["vote"]]}, "stacks[0].layers[0]", "'vote'"),
    ({"constraints": {"max_calls": 0}}, "constraints.max_calls", "(got 0)"),
    ({"samplers": "tpe"}, "samplers", "Extra inputs are not permitted"),
]


@pytest.mark.parametrize("change, field, value", BAD_SPACES)
def test_invalid_space_is_one_line_naming_file_field_and_value(tmp_path, change, field, value):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**stub_space("http://127.0.0.1:9/v1"), **change}))
    with pytest.raises(SpecError) as info:
        load_space(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path)) and field in message and value in message, message
    code, out, err = cli("search", "run", "--task", TASK, "--space", str(path), "--root", str(tmp_path / "runs"))
    assert code == 2 and err.count("\n") == 1 and field in err
    assert not (tmp_path / "runs").exists(), "an invalid space must be rejected before any trial"


def test_the_test_split_cannot_be_searched(tmp_path):
    code, _, err = cli("search", "run", "--task", TASK, "--split", "test", "--root", str(tmp_path))
    assert code == 2 and "never evaluates the test split" in err and err.count("\n") == 1


def test_default_space_covers_every_technique():
    space = load_space()
    types = {t for stack in space.spec.stacks for t in stack.layers}
    assert types == set(COMPONENT_TYPES)
    assert "generate>unit_test" in space.grid(has_tests=True)["stack"]
    assert "generate>unit_test" not in space.grid(has_tests=False)["stack"]  # requires: tests


# ---- strategies --------------------------------------------------------------------------------------------------
def test_grid_search_finds_the_known_best_spec_and_reports_it(tmp_path, stub, questions):
    study = search(tmp_path, stub, "grid")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = max(done, key=lambda t: t.value)
    assert best.value == 1.0 and layers_of(best) == BEST
    assert [t for t in done if t.value == 1.0] == [best]
    searched = {q for q, _, _ in stub.asked}
    assert searched and searched <= questions["dev"]
    buf = io.StringIO()
    result = report("grid", root=str(tmp_path), test=True, test_limit=9, progress=False, out=buf)
    text = buf.getvalue()
    assert result["best"].number == best.number and "Pareto front" in text and "greedy-1-call" in text
    assert (tmp_path / "grid" / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    exported = yaml.safe_load((tmp_path / "grid" / "export" / "best.yaml").read_text())
    assert exported["layers"] == BEST
    test_scores = {s.name.split(" ")[0]: s.accuracy for s in result["test"]}
    assert test_scores["best"] == 1.0 and test_scores["greedy-1-call"] == 0.0
    assert result["test_plot"] == tmp_path / "grid" / "report-test.png"
    assert result["test_plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {q for q, _, _ in stub.asked} - searched <= questions["test"]  # only --test reads the test split


def test_search_never_runs_a_test_split_example(tmp_path, stub, questions):
    study = search(tmp_path, stub, "random", trials=8)
    assert {q for q, _, _ in stub.asked} <= questions["dev"]
    dev_ids = {e.id for e in load_task(TASK).examples("dev")}
    stores = {t.user_attrs["run_store"] for t in study.trials if "run_store" in t.user_attrs}
    assert stores
    for path in stores:
        with RunStore(path) as store:
            assert store.config()["split"] == "dev" and {r.example_id for r in store.rows()} <= dev_ids


def _queued_search(tmp_path, stub, strategy: str, queue: list[dict]) -> object:
    """A search whose trials are `queue`, in order (the halving rule under test, not the sampler, decides)."""
    space = parse_space(stub_space(stub.base_url), "stub-space")
    settings = SearchSettings(TASK, space.raw, space.source, "dev", strategy, [4, 12], seed=0, threads=None)
    study, _ = create_or_load(strategy, open_storage(default_storage(tmp_path / strategy)), settings)
    for params in queue:
        study.enqueue_trial(params)
    return run_search(SearchJob(strategy, settings, len(queue), root=str(tmp_path), progress=False))


VOTE3 = {"stack": "generate>vote", "generate.samples": 3, "generate.temperature": 0.3, "vote.method": "majority"}


def _rows(trial) -> int:
    with RunStore(trial.user_attrs["run_store"]) as store:
        return len(store.rows())


def test_successive_halving_stops_weak_trials_at_the_first_rung(tmp_path, stub):
    weak = [{"stack": "generate", "generate.samples": 1, "generate.temperature": t} for t in (0.8, 0.0)]
    study = _queued_search(tmp_path, stub, "tpe", [VOTE3, *weak])
    best, *rest = study.trials
    assert best.state == optuna.trial.TrialState.COMPLETE and best.value == 1.0 and _rows(best) == 12
    for trial in rest:  # below the best at 4 examples: optuna's SuccessiveHalvingPruner stops them there
        assert trial.state == optuna.trial.TrialState.PRUNED and trial.user_attrs["pruned_at"] == 4
        assert _rows(trial) == 4 and list(trial.intermediate_values) == [4]


def test_a_repeated_proposal_is_answered_from_the_trial_it_repeats_and_not_counted(tmp_path, stub):
    """A trial whose parameters equal a finished trial's costs nothing and does not use up the budget: it gets the
    earlier value (a halved one: its intermediate values, pruned), a `duplicate_of` attr, and the search goes on until
    `trials` distinct architectures are done."""
    weak = [{"stack": "generate", "generate.samples": 1, "generate.temperature": t} for t in (0.8, 0.0)]
    space = parse_space(stub_space(stub.base_url), "stub-space")
    settings = SearchSettings(TASK, space.raw, space.source, "dev", "tpe", [4, 12], seed=0, threads=None)
    study, _ = create_or_load("dup", open_storage(default_storage(tmp_path / "dup")), settings)
    for params in [VOTE3, VOTE3, weak[0], weak[0], weak[1]]:
        study.enqueue_trial(params)
    run_search(SearchJob("dup", settings, 3, root=str(tmp_path), progress=False))
    first, again, halved, halved_again, last = study.trials[:5]
    asked = len(stub.asked)
    assert again.user_attrs["duplicate_of"] == 0 and again.value == first.value == 1.0
    assert again.user_attrs["spent_tokens"] == 0 and first.user_attrs["spent_tokens"] > 0
    assert halved.state == halved_again.state == optuna.trial.TrialState.PRUNED
    assert halved_again.user_attrs["duplicate_of"] == 2
    assert halved_again.intermediate_values == halved.intermediate_values and "duplicate_of" not in last.user_attrs
    assert len(study.trials) == 5  # three distinct trials counted; the two repeats did not end the search
    buf = io.StringIO()
    report("dup", root=str(tmp_path), out=buf, progress=False)
    assert "1 complete, 2 pruned (and 2 repeated proposals" in buf.getvalue()
    run_search(SearchJob("dup", None, 3, root=str(tmp_path), progress=False))  # a rerun: nothing left to do
    assert len(study.trials) == 5 and len(stub.asked) == asked


def test_a_search_whose_sampler_only_repeats_itself_stops_and_says_so(tmp_path, stub, capsys):
    space = parse_space(stub_space(stub.base_url, stacks=[["generate"]],
                                   components={"generate": {"samples": [1], "temperature": [0.0, 0.3]}}), "two")
    settings = SearchSettings(TASK, space.raw, space.source, "dev", "random", [4], seed=0, threads=None)
    study = run_search(SearchJob("two", settings, 5, root=str(tmp_path), progress=False))
    distinct = [t for t in study.trials if "duplicate_of" not in t.user_attrs]
    assert len(distinct) == 2 and len(study.trials) == 2 + 20  # the cap: max(20, 2 x trials) repeats
    assert "proposed already-run architectures 20 times (the cap for 5 trials); stopped with 2 distinct trials" \
        in capsys.readouterr().err


def test_two_objective_halving_stops_a_dominated_trial(tmp_path, stub):
    dominated = {**VOTE3, "generate.temperature": 0.8}  # as many tokens, lower accuracy
    cheaper = {"stack": "generate", "generate.samples": 1, "generate.temperature": 0.3}  # fewer tokens: on the front
    study = _queued_search(tmp_path, stub, "nsga2", [VOTE3, dominated, cheaper])
    best, worse, cheap = study.trials
    assert best.values[0] == 1.0 and _rows(best) == 12
    assert worse.state == optuna.trial.TrialState.PRUNED and _rows(worse) == 4
    assert cheap.state == optuna.trial.TrialState.COMPLETE and _rows(cheap) == 12
    assert cheap.values[1] < best.values[1]


def test_greedy_builds_layer_by_layer(tmp_path, stub):
    study = search(tmp_path, stub, "greedy", trials=100)
    first = [t for t in study.trials if t.user_attrs.get("greedy_round") == 1]
    second = [t for t in study.trials if t.user_attrs.get("greedy_round") == 2]
    assert len(first) == 6 and {t.params["stack"] for t in first} == {"generate"}
    winner = max((t for t in first if t.value is not None), key=lambda t: t.value)
    assert (winner.params["generate.samples"], winner.params["generate.temperature"]) == (1, 0.3)
    # round 2 keeps round 1's winner and adds a vote, which over one sample is redundant: pruned, so greedy stops
    assert second and all(t.params["generate.temperature"] == 0.3 and t.params["generate.samples"] == 1
                          and t.state == optuna.trial.TrialState.PRUNED for t in second)
    assert not [t for t in study.trials if t.user_attrs.get("greedy_round", 0) > 2]


def test_nsga2_is_a_two_objective_study_with_a_pareto_front(tmp_path, stub):
    study = search(tmp_path, stub, "nsga2", trials=10)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    front = study.best_trials
    assert front and any(t.values[0] == 1.0 for t in front)


# ---- resume, workers, PostgreSQL -------------------------------------------------------------------------------
def _trials(db: Path) -> list[tuple]:
    return sqlite_rows.rows(db, "SELECT number, state, datetime_complete FROM trials ORDER BY number")


def _search_cmd(space: Path, root: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lamina", "search", "run", "--task", TASK, "--space", str(space), "--root",
            str(root), "--name", "s", "--strategy", "random", "--limit", "6", "--no-halving", "--no-progress",
            "--threads", "0", *extra]


def test_kill_9_mid_study_then_rerun_redoes_no_finished_trial(tmp_path, answers):
    with AnswerStub(answers, delay_s=0.05) as stub:
        space = tmp_path / "space.yaml"
        space.write_text(yaml.safe_dump(stub_space(stub.base_url)))
        cmd = _search_cmd(space, tmp_path, "--trials", "8", "--heartbeat", "1", "--concurrency", "1")
        db = tmp_path / "s" / "study.sqlite"
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while sum(t[1] == "COMPLETE" for t in _trials(db)) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        assert proc.returncode == -signal.SIGKILL
        before = {t[0]: t for t in _trials(db) if t[1] in ("COMPLETE", "PRUNED")}
        assert 2 <= len(before) < 8, "the study should have been killed mid-way"
        stores = {}
        for trial in load_study("s", root=str(tmp_path))[0].trials:
            if trial.number in before and "run_store" in trial.user_attrs:
                with RunStore(trial.user_attrs["run_store"]) as store:
                    stores[trial.number] = {r.example_id: r.finished_at for r in store.rows()}
        time.sleep(2.5)  # the killed trial's heartbeat is now stale (2 heartbeats)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    after = _trials(db)
    assert {t[0]: t for t in after if t[0] in before} == before, "a finished trial was changed or redone"
    study = load_study("s", root=str(tmp_path))[0]
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert sum("duplicate_of" not in t.user_attrs for t in finished) == 8  # repeated proposals are not counted
    for trial in study.trials:
        if trial.number in stores:
            with RunStore(trial.user_attrs["run_store"]) as store:
                now = {r.example_id: r.finished_at for r in store.rows()}
            assert {k: now[k] for k in stores[trial.number]} == stores[trial.number]
    killed = [t for t in after if t[1] == "FAIL"]
    assert len(killed) <= 1  # the trial running at the kill: failed as stale, its parameters re-queued


def test_two_workers_share_one_study_without_duplicating_trials(tmp_path, stub):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(stub_space(stub.base_url)))
    cmd = _search_cmd(space, tmp_path, "--trials", "10", "--workers", "2")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    study = load_study("s", root=str(tmp_path))[0]
    counted = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
               and not t.user_attrs.get("surplus") and "duplicate_of" not in t.user_attrs]
    assert len(counted) == 10
    assert len({t.user_attrs["worker"] for t in counted}) == 2, "both workers should have run trials"
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    # the two workers do not propose one sequence: their samplers have their own seeds
    sequences = {}
    for t in sorted(counted, key=lambda t: t.number):
        sequences.setdefault(t.user_attrs["worker"], []).append(tuple(sorted(t.params.items())))
    first, second = sequences.values()
    assert first[:3] != second[:3]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL server on loopback (as the postgres user when run as root)."""
    bindir = Path("/usr/lib/postgresql/15/bin")
    initdb = shutil.which("initdb") or (str(bindir / "initdb") if (bindir / "initdb").exists() else None)
    if initdb is None:
        pytest.skip("PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql/15/bin)")
    pytest.importorskip("psycopg2", reason="psycopg2-binary (the `search`/`test` extra) is not installed")
    pg_ctl = str(Path(initdb).parent / "pg_ctl")
    folder = Path(tempfile.mkdtemp(prefix="lamina-pg-"))
    data, port = folder / "data", _free_port()
    as_user = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    try:
        subprocess.run(as_user + [initdb, "-D", str(data), "-A", "trust", "-U", "postgres"], check=True,
                       capture_output=True, timeout=120)
        subprocess.run(as_user + [pg_ctl, "-D", str(data), "-w", "-l", str(folder / "log"), "-o",
                                  f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start"],
                       check=True, capture_output=True, timeout=120)
    except (subprocess.SubprocessError, OSError, KeyError, LookupError) as exc:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"PostgreSQL could not be started here: {exc}")
    yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    subprocess.run(as_user + [pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True, timeout=60)
    shutil.rmtree(folder, ignore_errors=True)


def test_a_second_process_joins_a_postgresql_study(tmp_path, stub, postgres_url):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(stub_space(stub.base_url)))
    first = _search_cmd(space, tmp_path / "a", "--trials", "4", "--storage", postgres_url)
    assert subprocess.run(first, capture_output=True, text=True, timeout=300).returncode == 0
    join = [sys.executable, "-m", "lamina", "search", "run", "--name", "s", "--storage", postgres_url, "--trials", "7",
            "--root", str(tmp_path / "b"), "--no-progress"]
    done = subprocess.run(join, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    study, settings, _ = load_study("s", storage=postgres_url, root=str(tmp_path / "b"))
    finished = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
                and "duplicate_of" not in t.user_attrs]  # repeated proposals are not counted
    assert len(finished) == 7 and settings.task == TASK and settings.strategy == "random"
    per_worker = collections.Counter(t.user_attrs["worker"] for t in finished)
    assert sorted(per_worker.values()) == [3, 4]  # the first process's 4 trials, then the joiner's 3
    code, out, _ = cli("search", "report", "s", "--storage", postgres_url, "--root", str(tmp_path / "b"))
    assert code == 0 and "Pareto front" in out
    clash = _search_cmd(space, tmp_path / "a", "--trials", "4", "--storage", postgres_url, "--seed", "5")
    refused = subprocess.run(clash, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "holds a different search (seed: stored 0 vs now 5)" in refused.stderr


def test_the_per_example_guard_refuses_a_row_outside_the_search_split(tmp_path):
    from lamina.eval.store import ResultRow
    from lamina.search.objective import Objective

    space = parse_space(stub_space("http://127.0.0.1:9/v1"), "stub-space")
    settings = SearchSettings(TASK, space.raw, space.source, "dev", "random", [4, 12], threads=None)
    objective = Objective(space, settings, tmp_path, trial_budget=1)
    task = load_task(TASK)
    dev, test = task.examples("dev", 1)[0], task.examples("test", 1)[0]
    objective.on_example(ResultRow(dev.id, 0, "1", "1", dev.reference, 1.0, usage={"total_tokens": 7}))
    assert objective.tally.spent_tokens == 7
    with pytest.raises(SpecError, match=f"example '{test.id}' is not in the search split 'dev'"):
        objective.on_example(ResultRow(test.id, 0, "1", "1", test.reference, 1.0))


def test_a_trial_beyond_the_budget_is_surplus_unless_an_earlier_one_failed():
    from lamina.search.objective import is_surplus

    study = optuna.create_study()
    first, second, third = study.ask(), study.ask(), study.ask()
    assert not is_surplus(second, 2) and is_surplus(third, 2) and not is_surplus(third, 3)
    study.tell(first, state=optuna.trial.TrialState.FAIL)  # a failed trial frees its slot
    assert not is_surplus(third, 2)


def test_a_search_whose_trials_keep_failing_stops_with_one_line(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(stub_space(dead)))
    code, _, err = cli("search", "run", "--task", TASK, "--space", str(space), "--root", str(tmp_path), "--name", "s",
                       "--strategy", "grid", "--limit", "2", "--no-halving", "--no-progress")
    assert code == 2 and err.count("\n") == 1 and "3 trials in a row failed" in err and "ConnectError" in err
    study = load_study("s", root=str(tmp_path))[0]
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == 3 and all("ConnectError" in t.user_attrs["error"] for t in failed)


@pytest.mark.parametrize("first, selectable", [("generate", True), ("program", True), ("first_finish", False)])
def test_a_vote_over_a_sampling_layer_is_redundant_only_over_one_candidate(first, selectable):
    from lamina.search.space import estimate

    spec = {"models": {"m": {"model": "default"}},
            "layers": [[{"type": first, "model": "m", "samples": 4}], [{"type": "vote", "method": "majority"}]]}
    calls, tokens, redundant = estimate(spec, 32)
    assert (redundant is None) is selectable, redundant
    if selectable:
        assert calls == 1 and tokens == 32 + 4 * 256


def test_samples_that_nothing_selects_among_are_redundant():
    from lamina.search.space import estimate

    spec = {"models": {"m": {"model": "default"}}, "layers": [[{"type": "generate", "model": "m", "samples": 4}]]}
    assert "nothing selects" in estimate(spec, 32)[2]
    assert estimate({**spec, "resolve": "random"}, 32)[2] is None
    assert estimate({**spec, "layers": [[{"type": "generate", "model": "m", "samples": 1}]]}, 32)[2] is None
    searched = {**spec, "layers": [[{"type": "search", "model": "m", "width": 4, "depth": 2}]]}
    assert estimate(searched, 32)[2] is None  # a search puts its chosen answer first


@pytest.mark.parametrize("algorithm", ["best_of_n", "beam", "dvts", "particle_filter", "astar"])
def test_a_search_layer_is_estimated_by_the_technique_itself(algorithm):
    """The space's constraint check and the technique's budget reservation share one bound (search_cost), which
    depends on the algorithm and on beam_width (A* extends every node it pops by beam_width children)."""
    from lamina.search.space import estimate
    from lamina.techniques.search import SearchSpec, search_cost

    def searched(**fields):
        comp = {"type": "search", "model": "m", "algorithm": algorithm, "width": 4, "depth": 6,
                "step_max_tokens": 32, **fields}
        return {"models": {"m": {"model": "default"}}, "layers": [[comp]]}, SearchSpec.model_validate(comp)

    for beam_width in (1, 2, 4):
        spec, comp = searched(beam_width=beam_width)
        cost = search_cost(comp, 160)
        assert estimate(spec, 160) == (cost.calls, cost.tokens, None)
    narrow, wide = (estimate(searched(beam_width=m)[0], 160) for m in (1, 4))
    if algorithm == "astar":  # 1 + W x D expansions of M children: 25 requests either way, 4x the children
        assert narrow[0] == wide[0] == 25 and wide[1] - narrow[1] == 25 * 3 * 32
    elif algorithm in ("beam", "dvts"):  # fewer nodes kept per round with wider groups
        assert wide[0] < narrow[0]


def test_the_study_opens_in_optuna_dashboard(tmp_path, stub):
    """optuna-dashboard (the `search` extra) serves a study `lamina search` wrote: its trials, their accuracy and
    the linked run store, through the dashboard's own HTTP API on loopback."""
    pytest.importorskip("optuna_dashboard", reason="optuna-dashboard is not installed (pip install '.[search]')")
    import json
    import urllib.request

    search(tmp_path, stub, "random", trials=3, rungs=(4,))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dashboard = Path(sys.executable).with_name("optuna-dashboard")
    proc = subprocess.Popen([str(dashboard), f"sqlite:///{tmp_path / 'random' / 'study.sqlite'}", "--host",
                             "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline, studies = time.monotonic() + 60, None
        while studies is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    studies = json.load(r)["study_summaries"]
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()[-2000:]
                time.sleep(0.3)
        assert [s["study_name"] for s in studies] == ["random"]
        study_id = studies[0]["study_id"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{study_id}", timeout=10) as r:
            trials = json.load(r)["trials"]
        attrs = [{a["key"]: a["value"] for a in t["user_attrs"]} for t in trials]
        assert sum("duplicate_of" not in a for a in attrs) == 3  # and any repeated proposals, marked
        done = [a for a in attrs if "accuracy" in a]
        assert done and all(Path(a["run_store"]).is_file() for a in done)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
