"""One trial: sample a spec from the space, score it on the search split rung by rung (successive halving), and
record where its eval run lives. Identical specs share one run store, so a retried or repeated trial redoes nothing."""
from __future__ import annotations

import asyncio
import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lamina.errors import LaminaError, SpecError
from lamina.eval.store import ResultRow
from lamina.search.space import SearchSpace, spec_hash
from lamina.search.study import SearchSettings

SURPLUS = "surplus"  # user attr of a trial started after the study's trial budget was reached by other workers
DUPLICATE = "duplicate_of"  # user attr: the number of the finished trial whose parameters this trial repeats
MAX_FAILURES_IN_A_ROW = 3  # then the search stops: an unreachable backend would otherwise fail trials forever


@dataclass(slots=True)
class Tally:
    """What this worker has spent and found, for the study's progress bar."""
    spent_tokens: int = 0
    examples: int = 0
    best: float | None = None
    bar: Any = None

    def add(self, row: ResultRow) -> None:
        usage = row.usage
        self.spent_tokens += int(usage.get("spent_tokens", usage.get("total_tokens", 0)))
        self.examples += 1
        self.show()

    def finished(self, value: float | None) -> None:
        if value is not None and (self.best is None or value > self.best):
            self.best = value
        if self.bar is not None:
            self.bar.update(1)
        self.show()

    def show(self) -> None:
        if self.bar is not None:
            best = "-" if self.best is None else f"{self.best:.3f}"
            self.bar.set_postfix(best=best, tokens=self.spent_tokens, refresh=True)


@dataclass
class Objective:
    """Callable for `study.optimize`: returns accuracy (or accuracy, tokens per example for NSGA-II)."""
    space: SearchSpace
    settings: SearchSettings
    directory: Path
    trial_budget: int
    progress: bool = False
    tally: Tally = field(default_factory=Tally)
    failures_in_a_row: int = 0

    def __post_init__(self) -> None:
        from lamina.tasks.task import load_task

        self.task = load_task(self.settings.task)
        examples = self.task.examples(self.settings.split, self.settings.rungs[-1])
        self.allowed = {e.id for e in examples}
        self.has_tests = self.task.scorer.kind == "code" or any(e.tests for e in examples)  # unit_test stacks apply
        self.multi = len(self.settings.objectives) > 1

    @property
    def cache_path(self) -> Path:
        return self.directory / "calls.sqlite"

    def run_path(self, digest: str) -> Path:
        return self.directory / "trials" / f"{digest}.sqlite"

    def __call__(self, trial: Any) -> float | tuple[float, float]:
        import optuna

        storage = trial.study._storage
        if storage.get_heartbeat_interval():  # beat now: a trial with the worker attr has a heartbeat (driver.py)
            storage.record_heartbeat(trial._trial_id)
        trial.set_user_attr("worker", f"{os.uname().nodename}:{os.getpid()}")
        if is_surplus(trial, self.trial_budget):
            trial.set_user_attr(SURPLUS, True)
            raise optuna.TrialPruned("the study's trial budget was reached by other workers")
        spec = self.space.sample(trial, self.has_tests)
        digest = spec_hash(spec)
        trial.set_user_attr("spec_hash", digest)
        trial.set_user_attr("run_store", str(self.run_path(digest)))
        earlier = repeated(trial)
        if earlier is not None:
            return repeat(trial, earlier, self.multi)
        trial.set_user_attr("spec", spec)
        spent = self.tally.spent_tokens
        try:
            value = asyncio.run(self._evaluate(trial, spec, digest))
        except LaminaError as exc:
            self.failures_in_a_row += 1
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            if self.failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
                raise SearchStopped(f"{self.failures_in_a_row} trials in a row failed; the last: "
                                    f"{type(exc).__name__}: {exc}") from None
            raise TrialFailed(str(exc)) from exc
        finally:
            trial.set_user_attr("spent_tokens", self.tally.spent_tokens - spent)
        self.failures_in_a_row = 0
        return value

    async def _evaluate(self, trial: Any, spec: dict[str, Any], digest: str) -> float | tuple[float, float]:
        import optuna

        from lamina.architecture import Architecture
        from lamina.eval.harness import EvalOptions, evaluate
        from lamina.eval.store import RunStore
        from lamina.spec import parse_spec

        arch = Architecture(parse_spec(with_threads(spec, self.settings.threads), f"trial {trial.number}"),
                            cache=self.cache_path)
        try:
            with RunStore(self.run_path(digest)) as store:
                for rung in self.settings.rungs:
                    options = EvalOptions(self.settings.split, rung, self.settings.concurrency, self.progress)
                    summary, failures = await evaluate(arch, self.task, store, options, on_example=self.on_example)
                    if failures:
                        raise LaminaError(f"trial {trial.number}: {len(failures)} example(s) failed transiently "
                                          f"({failures[0][1]}); rerun the search to retry them")
                    record(trial, summary)
                    if rung == self.settings.rungs[-1]:
                        break
                    if self._prune(trial, rung, summary):
                        trial.set_user_attr("pruned_at", rung)
                        raise optuna.TrialPruned(f"not promising after {rung} examples")
        finally:
            await arch.aclose()
        return (summary.accuracy, summary.tokens) if self.multi else summary.accuracy

    def on_example(self, row: ResultRow) -> None:
        if row.example_id not in self.allowed:  # the harness was asked for the search split only: never the test split
            raise SpecError(f"example {row.example_id!r} is not in the search split {self.settings.split!r}")
        self.tally.add(row)

    def _prune(self, trial: Any, rung: int, summary: Any) -> bool:
        if not self.multi:
            trial.report(summary.accuracy, rung)
            return trial.should_prune()
        return dominated_at_rung(trial, rung, summary.accuracy, summary.tokens)


def repeated(trial: Any) -> Any:
    """The earliest finished (complete, or stopped by successive halving) trial with exactly this trial's parameters,
    or None. TPE often proposes an architecture again once it has narrowed in on it (optuna/optuna#2021)."""
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    same = [t for t in trial.study.get_trials(deepcopy=False, states=states)
            if t.number != trial.number and t.params == trial.params and not t.user_attrs.get(SURPLUS)
            and not t.user_attrs.get(DUPLICATE) and "pruned_because" not in t.user_attrs]
    return min(same, key=lambda t: t.number, default=None)


def repeat(trial: Any, earlier: Any, multi: bool) -> float | tuple[float, float]:
    """Finish a repeated trial at no cost, as Optuna's FAQ does for duplicated parameters ("How can I ignore
    duplicated samples?"): the earlier trial's value (a halved one: its intermediate values, then pruned), so the
    sampler learns the same as from the earlier trial. It is marked DUPLICATE and does not count toward the budget."""
    import optuna

    trial.set_user_attr(DUPLICATE, earlier.number)
    trial.set_user_attr("spent_tokens", 0)
    if earlier.state == optuna.trial.TrialState.PRUNED:
        for step, value in sorted(earlier.intermediate_values.items()):
            trial.report(value, step)
        raise optuna.TrialPruned(f"repeats trial {earlier.number}, which was stopped by successive halving")
    return tuple(earlier.values) if multi else earlier.value


class TrialFailed(LaminaError):
    """One trial failed (recorded as FAIL, with its `error` attr); the search goes on."""


class SearchStopped(LaminaError):
    """Trials keep failing (e.g. a backend is unreachable): the search stops instead of failing trials forever."""


def record(trial: Any, summary: Any) -> None:
    """The trial's latest scores as user attrs: what the report, the pruning of other workers and a rerun read."""
    rungs = dict(trial.user_attrs.get("rungs", {}))
    rungs[str(summary.examples)] = [summary.accuracy, summary.tokens]
    for key, value in {"rungs": rungs, "examples": summary.examples, "accuracy": summary.accuracy,
                       "ci_low": summary.ci_low, "ci_high": summary.ci_high, "tokens_per_example": summary.tokens,
                       "calls_per_example": summary.calls, "errors": summary.errors}.items():
        trial.set_user_attr(key, value)


def dominated_at_rung(trial: Any, rung: int, accuracy: float, tokens: float) -> bool:
    """Successive halving for two objectives: stop a trial that another trial already beats at this rung in both
    accuracy (at least as high) and tokens per example (at most as many), strictly in one."""
    import optuna

    for other in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                                  optuna.trial.TrialState.PRUNED)):
        seen = other.user_attrs.get("rungs", {}).get(str(rung))
        if seen and seen[0] >= accuracy and seen[1] <= tokens and (seen[0] > accuracy or seen[1] < tokens):
            return True
    return False


def is_surplus(trial: Any, budget: int) -> bool:
    """Whether `budget` trials numbered below this one already count (finished, running or waiting; not failed,
    not surplus, not a repeat): workers racing for the last slots start extra trials, which stop here before any work."""
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)
    ahead = [t for t in trial.study.get_trials(deepcopy=False, states=states)
             if t.number < trial.number and counts(t)]
    return len(ahead) >= budget


def counts(trial: Any) -> bool:
    """Whether a trial counts toward the study's budget: not surplus, not a repeat of a finished trial."""
    return not trial.user_attrs.get(SURPLUS) and DUPLICATE not in trial.user_attrs


def with_threads(spec: dict[str, Any], threads: int | None) -> dict[str, Any]:
    """The spec with every local model's engine told to use `threads` threads (workers share the cores)."""
    if not threads:
        return spec
    spec = copy.deepcopy(spec)
    for alias in spec["models"].values():
        if alias.get("backend", "local") == "local":
            alias.setdefault("engine", {})["num_threads"] = threads
    return spec
