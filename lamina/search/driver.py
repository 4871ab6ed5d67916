"""Run a search: one worker loop (Optuna samplers or Archon's greedy layer-by-layer construction) in this process,
or K worker processes sharing the study. Every worker stops when the study holds `trials` counted trials: distinct
architectures (a trial repeating a finished trial's parameters is answered from it and not counted), or when the sampler
has proposed `repeat_cap(trials)` repeats (it has converged; the search says so)."""
from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lamina.errors import LaminaError, SpecError
from lamina.search.objective import DUPLICATE, Objective, TrialFailed, counts
from lamina.search.space import SearchSpace, layer_keys, parse_space
from lamina.search.study import SearchSettings, create_or_load, default_storage, open_storage, stored_settings, study_dir


@dataclass(slots=True)
class SearchJob:
    name: str
    settings: SearchSettings | None  # None: join the existing study with its stored settings
    trials: int = 20
    storage: str | None = None  # an RDB URL; None: SQLite under root/NAME/study.sqlite
    root: str = "runs/search"
    workers: int = 1
    progress: bool = True
    heartbeat_s: int = 60
    worker: int | None = None  # this worker's index among several sharing the study (its sampler seed)

    @property
    def directory(self) -> Path:
        return study_dir(self.name, self.root)

    @property
    def storage_url(self) -> str:
        return self.storage or default_storage(self.directory)


def run_search(job: SearchJob) -> Any:
    """Create (or continue, or join) the study and run trials until it holds `job.trials`; returns the study."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if job.trials < 1:
        raise SpecError(f"--trials must be at least 1, got {job.trials}")
    if job.workers < 1:
        raise SpecError(f"--workers must be at least 1, got {job.workers}")
    storage = open_storage(job.storage_url, job.heartbeat_s)
    settings = job.settings or stored_settings(storage, job.name)
    if settings is None:
        raise SpecError(f"no search study named {job.name!r} in {job.storage_url}; give --task to start one")
    space = parse_space(settings.space, settings.space_source)
    objective = Objective(space, settings, job.directory, job.trials, progress=job.progress and job.workers == 1)
    grid = space.grid(objective.has_tests) if settings.strategy == "grid" else None
    worker = job.worker if job.worker is not None or job.settings is not None else os.getpid()  # a joiner
    study, settings = create_or_load(job.name, storage, settings, grid, worker)
    budget = objective.trial_budget = job.trials if grid is None else min(job.trials, _grid_size(grid))
    if job.workers > 1:
        _spawn_workers(job, study, budget)
        return study
    bar = StudyBar(study, budget, job.progress)
    objective.tally.bar, objective.tally.spent_tokens = bar.bar, bar.spent_tokens()
    try:
        if settings.strategy == "greedy":
            greedy(study, space, objective, settings, budget, bar)
        else:
            while counted(study) < budget and repeats(study) < repeat_cap(budget):
                study.optimize(objective, n_trials=1, catch=(TrialFailed,), callbacks=[bar.callback])
    finally:
        bar.close()
    if counted(study) < budget:
        print(f"search {study.study_name}: the sampler proposed already-run architectures {repeats(study)} times "
              f"(the cap for {budget} trials); stopped with {counted(study)} distinct trials", file=sys.stderr)
    return study


def repeat_cap(budget: int) -> int:
    """How many repeated proposals a study may hold before the search stops short of its budget."""
    return max(20, 2 * budget)


def repeats(study: Any) -> int:
    """Trials that repeated a finished trial's parameters (answered from it, not counted)."""
    return sum(DUPLICATE in t.user_attrs for t in study.get_trials(deepcopy=False))


def counted(study: Any) -> int:
    """Trials that count toward the budget: finished (complete or pruned) or running, not surplus, not repeats of a
    finished trial. Running trials
    whose worker died are failed first (which re-queues their parameters)."""
    import optuna

    fail_dead_trials(study)
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)
    return sum(counts(t) for t in study.get_trials(deepcopy=False, states=states))


def fail_dead_trials(study: Any) -> None:
    """Optuna fails a running trial whose heartbeat went stale, but not one that died before its first heartbeat
    (between `ask` and the objective's start, where Objective records a heartbeat and the `worker` attr): such a
    trial older than the grace period is failed here, and its fixed parameters (greedy, a retry) re-queued."""
    import datetime

    import optuna
    from optuna.storages import fail_stale_trials

    fail_stale_trials(study)
    storage = study._storage
    grace = getattr(storage, "grace_period", None) or 2 * (storage.get_heartbeat_interval() or 60)
    now = datetime.datetime.now()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if "worker" in trial.user_attrs or trial.datetime_start is None:
            continue
        if (now - trial.datetime_start).total_seconds() > grace:
            if storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL):
                fixed = trial.system_attrs.get("fixed_params")
                if fixed:
                    study.enqueue_trial(fixed, user_attrs=dict(trial.user_attrs))


class StudyBar:
    """The study's progress bar (trials counted, best accuracy, tokens spent), read from the study itself, so one bar
    can follow workers in other processes."""

    def __init__(self, study: Any, budget: int, enabled: bool) -> None:
        self.study, self.bar = study, None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=budget, initial=min(budget, counted_finished(study)), unit="trial",
                            desc=f"search {study.study_name}", file=sys.stderr, position=1, leave=True)
            self.refresh()

    def callback(self, study: Any, trial: Any) -> None:
        self.refresh()

    def refresh(self) -> None:
        if self.bar is None:
            return
        import optuna

        done = [t for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                                         optuna.trial.TrialState.PRUNED))
                if counts(t)]
        full = [t.user_attrs["accuracy"] for t in done if t.state == optuna.trial.TrialState.COMPLETE
                and "accuracy" in t.user_attrs]
        self.bar.n = min(self.bar.total, len(done))
        self.bar.set_postfix(best="-" if not full else f"{max(full):.3f}", tokens=self.spent_tokens(), refresh=True)

    def spent_tokens(self) -> int:
        """Tokens the study's trials have spent so far (all workers, all runs)."""
        return sum(int(t.user_attrs.get("spent_tokens", 0)) for t in self.study.get_trials(deepcopy=False))

    def close(self) -> None:
        if self.bar is not None:
            self.refresh()
            self.bar.close()


def counted_finished(study: Any) -> int:
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return sum(counts(t) for t in study.get_trials(deepcopy=False, states=states))


def greedy(study: Any, space: SearchSpace, objective: Objective, settings: SearchSettings, budget: int,
           bar: StudyBar) -> None:
    """Archon's greedy construction: round k tries every allowed k-th layer (each type the grammar allows after the
    best prefix, each with up to `greedy_width` settings) on top of the best (k-1)-layer architecture, keeping the
    earlier layers' settings; it stops when a round does not beat the one before. Trials are enqueued with fixed
    parameters (skipped if they exist), so a rerun or another worker continues the same rounds."""
    import optuna

    resolve = space.grid(objective.has_tests).get("resolve", [None])[0]
    prefix: list[str] = []
    params: dict[str, Any] = {} if resolve is None else {"resolve": resolve}
    best_value = float("-inf")
    by_key = {s.key: s for s in space.stacks(objective.has_tests)}
    for k in range(1, 1 + max(len(s.layers) for s in space.stacks(objective.has_tests))):
        stacks = [s for s in space.stacks(objective.has_tests) if len(s.layers) == k and s.layers[:-1] == prefix]
        rng = random.Random(f"{settings.seed}-{k}")
        for stack in stacks:
            key, ctype = layer_keys(stack.layers)[-1]
            for option in space.layer_options(ctype, key, settings.greedy_width, rng):
                study.enqueue_trial({**params, "stack": stack.key, **option}, user_attrs={"greedy_round": k},
                                    skip_if_exists=True)
        _drain_round(study, objective, k, budget, bar)
        done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                if t.user_attrs.get("greedy_round") == k]
        if not done:
            return
        top = max(done, key=lambda t: (t.value, -t.user_attrs.get("tokens_per_example", 0.0), -t.number))
        if top.value <= best_value:
            return
        best_value, prefix = top.value, list(by_key[top.params["stack"]].layers)
        params = {n: v for n, v in top.params.items() if n != "stack"}


def _drain_round(study: Any, objective: Objective, k: int, budget: int, bar: StudyBar) -> None:
    import optuna

    waiting, running = optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING
    while True:
        pending = [t for t in study.get_trials(deepcopy=False, states=(waiting, running))
                   if t.user_attrs.get("greedy_round") == k]
        if counted(study) >= budget and not any(t.state == running for t in pending):
            return
        if any(t.state == waiting for t in pending):
            study.optimize(objective, n_trials=1, catch=(TrialFailed,), callbacks=[bar.callback])
        elif pending:
            time.sleep(1.0)  # another worker is finishing this round's last trials
        else:
            return


def _spawn_workers(job: SearchJob, study: Any, budget: int) -> None:
    """K copies of `lamina search run` joining this study, each with one engine thread; this process shows the bar."""
    cmd = [sys.executable, "-m", "lamina", "search", "run", "--name", job.name, "--storage", job.storage_url,
           "--root", job.root, "--trials", str(job.trials), "--heartbeat", str(job.heartbeat_s), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd + ["--worker-index", str(i)], env=env) for i in range(job.workers)]
    bar = StudyBar(study, budget, job.progress)
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(1.0)
            bar.refresh()
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        bar.close()
    failed = [p.returncode for p in procs if p.returncode]
    if failed:
        raise LaminaError(f"{len(failed)} of {job.workers} search workers failed (exit codes {failed})")


def _grid_size(grid: dict[str, list[Any]]) -> int:
    size = 1
    for values in grid.values():
        size *= len(values)
    return size
