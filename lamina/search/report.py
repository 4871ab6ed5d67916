"""`lamina search report`: the trials and the accuracy-vs-tokens Pareto front as a table and a PNG, the best and
Pareto specs exported as YAML, and (--test) those specs and one greedy call re-scored on the held-out test split."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from lamina.errors import SpecError
from lamina.search.objective import DUPLICATE, counts, with_threads
from lamina.search.study import SearchSettings, open_storage, stored_settings, study_dir


@dataclass(slots=True)
class TrialRow:
    number: int
    state: str
    stack: str
    params: dict[str, Any]
    examples: int
    accuracy: float | None
    ci_low: float
    ci_high: float
    tokens: float
    spec: dict[str, Any] | None
    run_store: str | None
    note: str = ""

    @classmethod
    def of(cls, trial: Any) -> "TrialRow":
        attrs = trial.user_attrs
        note = attrs.get("pruned_because") or (f"pruned after {attrs['pruned_at']} examples"
                                               if "pruned_at" in attrs else "")
        params = {k: v for k, v in trial.params.items() if k != "stack"}
        return cls(trial.number, trial.state.name.lower(), str(trial.params.get("stack", "-")), params,
                   int(attrs.get("examples", 0)), attrs.get("accuracy"), attrs.get("ci_low", 0.0),
                   attrs.get("ci_high", 0.0), float(attrs.get("tokens_per_example", 0.0)), attrs.get("spec"),
                   attrs.get("run_store"), note)


def load_study(study: str, storage: str | None = None, root: str = "runs/search") -> tuple[Any, SearchSettings, Path]:
    """(study, settings, its folder) from a study name under `root`, a study SQLite file, or `storage` + name."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = Path(study)
    if storage is None and path.suffix in (".sqlite", ".db") and path.is_file():
        url, directory = f"sqlite:///{path}", path.parent
        names = optuna.get_all_study_names(url)
        if len(names) != 1:
            raise SpecError(f"{path}: holds {len(names)} studies ({', '.join(names)}); pass --storage and a name")
        name = names[0]
    else:
        directory, name = study_dir(study, root), study
        url = storage or f"sqlite:///{directory / 'study.sqlite'}"
        if storage is None and not (directory / "study.sqlite").is_file():
            raise SpecError(f"no search study {study!r}: {directory / 'study.sqlite'} does not exist")
    rdb = open_storage(url)
    settings = stored_settings(rdb, name)
    if settings is None:
        raise SpecError(f"no search study named {name!r} in {url}")
    return optuna.load_study(study_name=name, storage=rdb), settings, directory


def trial_rows(study: Any) -> list[TrialRow]:
    """Every trial but the surplus ones and the repeats of a finished trial (the trial they repeat is listed)."""
    return [TrialRow.of(t) for t in study.get_trials(deepcopy=False) if counts(t)]


def finished(rows: list[TrialRow], settings: SearchSettings) -> list[TrialRow]:
    """Complete trials scored on every example of the last rung (comparable with one another)."""
    return [r for r in rows if r.state == "complete" and r.examples >= settings.rungs[-1] and r.accuracy is not None]


def best_of(rows: list[TrialRow]) -> TrialRow | None:
    """Highest accuracy; ties go to fewer tokens per example, then to the earlier trial."""
    return max(rows, key=lambda r: (r.accuracy, -r.tokens, -r.number), default=None)


def pareto_front(rows: list[TrialRow]) -> list[TrialRow]:
    """Trials no other trial beats in both accuracy (higher) and tokens per example (fewer), by tokens; one per
    (accuracy, tokens) point."""
    front, best_acc = [], float("-inf")
    for row in sorted(rows, key=lambda r: (r.tokens, -r.accuracy, r.number)):
        if row.accuracy > best_acc:
            front.append(row)
            best_acc = row.accuracy
    return front


def format_trials(rows: list[TrialRow], front: list[TrialRow], top: int) -> str:
    on_front = {r.number for r in front}
    ordered = sorted(rows, key=lambda r: (r.accuracy is None, -(r.accuracy or 0), -r.examples, r.tokens))[:top]
    table = [["#", "state", "stack", "n", "accuracy", "95% CI", "tokens/ex", "pareto", "settings / note"]]
    for r in ordered:
        acc = "-" if r.accuracy is None else f"{r.accuracy:.3f}"
        ci = "-" if r.accuracy is None else f"[{r.ci_low:.2f}, {r.ci_high:.2f}]"
        settings = " ".join(f"{k}={v}" for k, v in r.params.items() if not k.endswith(".model"))
        note = f"{settings}  ({r.note})" if r.note else settings
        table.append([str(r.number), r.state, r.stack, str(r.examples), acc, ci, f"{r.tokens:.1f}",
                      "*" if r.number in on_front else "", note[:100]])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1] for row in table]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def plot_front(rows: list[TrialRow], front: list[TrialRow], path: Path, title: str) -> Path:
    """Accuracy (95% Wilson interval) against tokens per example for every finished trial; the front joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for group, colour, label in ((rows, "tab:blue", "trial"), (front, "tab:red", "Pareto front")):
        if not group:
            continue
        ax.errorbar([r.tokens for r in group], [r.accuracy for r in group], fmt="o", color=colour, capsize=3,
                    yerr=[[max(0.0, r.accuracy - r.ci_low) for r in group], [max(0.0, r.ci_high - r.accuracy) for r in group]],
                    alpha=0.45 if group is rows else 0.9, label=label)
    if front:
        ax.step([r.tokens for r in front], [r.accuracy for r in front], where="post", color="tab:red", lw=1)
        for r in front:
            ax.annotate(f"#{r.number} {r.stack}", (r.tokens, r.accuracy), fontsize=7, xytext=(4, 4),
                        textcoords="offset points")
    if rows and min(r.tokens for r in rows) > 0:
        ax.set_xscale("log")
    ax.set(xlabel="mean tokens per example (prompt + completion)", ylabel="accuracy (95% Wilson CI)",
           ylim=(-0.02, 1.02), title=title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def export_specs(study_name: str, best: TrialRow | None, front: list[TrialRow], folder: Path) -> list[Path]:
    written = []
    for label, row in ([("best", best)] if best else []) + [(f"pareto-{r.number}", r) for r in front]:
        spec = {**row.spec, "name": f"{study_name}-{label}",
                "description": f"found by lamina search {study_name}, trial {row.number}: accuracy "
                               f"{row.accuracy:.3f} [{row.ci_low:.3f}, {row.ci_high:.3f}] on {row.examples} "
                               f"examples at {row.tokens:.1f} tokens/example"}
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{label}.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
        written.append(path)
    return written


def greedy_spec(settings: SearchSettings, max_tokens: int) -> dict[str, Any]:
    """One plain call at temperature 0 to the space's first model: the baseline every search must beat."""
    alias = dict(next(iter(settings.space["models"].values())))
    alias["params"] = {**alias.get("params", {}), "temperature": 0.0, "max_tokens": max_tokens}
    return {"name": "greedy-1-call", "models": {"m": alias}, "layers": [[{"type": "generate", "model": "m"}]],
            "seed": settings.space.get("seed", 0)}


def rescore(specs: list[tuple[str, dict[str, Any]]], settings: SearchSettings, directory: Path,
            limit: int | None, progress: bool, split: str = "test") -> list[Any]:
    """Each (label, spec) scored on the task's `split` (the held-out test split by default), in its own run store
    under DIRECTORY/SPLIT (resumable)."""
    from lamina.architecture import Architecture
    from lamina.eval.harness import EvalOptions, evaluate
    from lamina.eval.store import RunStore
    from lamina.spec import parse_spec
    from lamina.tasks.task import load_task

    task = load_task(settings.task)
    summaries = []

    async def one(label: str, spec: dict[str, Any]):
        arch = Architecture(parse_spec(with_threads(spec, settings.threads), label), cache=directory / "calls.sqlite")
        try:
            with RunStore(directory / split / f"{label}.sqlite") as store:
                options = EvalOptions(split, limit, settings.concurrency, progress)
                summary, failures = await evaluate(arch, task, store, options)
        finally:
            await arch.aclose()
        if failures:
            raise SpecError(f"{label}: {len(failures)} {split} example(s) failed ({failures[0][1]}); rerun to retry")
        summary.name = f"{label} [{task.name}/{split}]"
        return summary

    for label, spec in specs:
        summaries.append(asyncio.run(one(label, spec)))
    return summaries


def report(study_arg: str, *, storage: str | None = None, root: str = "runs/search", plot_path: str | None = None,
           export_dir: str | None = None, test: bool = False, test_limit: int | None = None, top: int = 30,
           progress: bool = True, out: TextIO) -> dict[str, Any]:
    study, settings, directory = load_study(study_arg, storage, root)
    rows = trial_rows(study)
    full = finished(rows, settings)
    front, best = pareto_front(full), best_of(full)
    tally = {s: sum(r.state == s for r in rows) for s in ("complete", "pruned", "fail", "running", "waiting")}
    repeated = sum(DUPLICATE in t.user_attrs for t in study.get_trials(deepcopy=False))
    print(f"study {study.study_name}: {settings.strategy} on {settings.task}/{settings.split}, rungs {settings.rungs}; "
          + ", ".join(f"{v} {k}" for k, v in tally.items() if v)
          + (f" (and {repeated} repeated proposals, answered from the trial they repeat)" if repeated else ""), file=out)
    print(format_trials(rows, front, top), file=out)
    if best is None:
        print("no trial has finished on every example yet", file=out)
        return {"best": None, "front": []}
    print(f"\nPareto front (accuracy vs tokens/example): " + ", ".join(
        f"#{r.number} {r.accuracy:.3f} @ {r.tokens:.1f}" for r in front), file=out)
    print(f"best: trial #{best.number} ({best.stack}) accuracy {best.accuracy:.3f} "
          f"[{best.ci_low:.3f}, {best.ci_high:.3f}] at {best.tokens:.1f} tokens/example", file=out)
    png = plot_front(full, front, Path(plot_path) if plot_path else directory / "report.png",
                     f"search {study.study_name}: {settings.task}/{settings.split}")
    written = export_specs(study.study_name, best, front, Path(export_dir) if export_dir else directory / "export")
    print(f"plot: {png}\nspecs: {', '.join(str(p) for p in written)}", file=out)
    result: dict[str, Any] = {"best": best, "front": front, "plot": png, "specs": written}
    if test:
        from lamina.eval.report import format_table
        from lamina.tasks.task import load_task

        chosen = {best.spec["name"]: ("best", best.spec)}
        for r in front:
            chosen.setdefault(r.spec["name"], (f"pareto-{r.number}", r.spec))
        specs = list(chosen.values()) + [("greedy-1-call", greedy_spec(settings, load_task(settings.task).spec.max_tokens))]
        result["test"] = rescore(specs, settings, directory, test_limit, progress)
        print("\nheld-out test split (never seen by the search):", file=out)
        print(format_table(result["test"]), file=out)
        from lamina.eval.report import plot

        result["test_plot"] = plot(result["test"], png.with_name(png.stem + "-test.png"),
                                   f"search {study.study_name}: found vs one greedy call, {settings.task}/test")
        print(f"test plot: {result['test_plot']}", file=out)
    return result


def summary_line(study: Any, job: Any) -> str:
    rows = trial_rows(study)
    settings = stored_settings(study._storage, study.study_name)
    best = best_of(finished(rows, settings)) if settings else None
    states = ", ".join(f"{sum(r.state == s for r in rows)} {s}" for s in ("complete", "pruned", "fail"))
    found = "no finished trial" if best is None else (f"best trial #{best.number} ({best.stack}) accuracy "
                                                      f"{best.accuracy:.3f} at {best.tokens:.1f} tokens/example")
    return (f"study {study.study_name}: {states}; {found}; report: lamina search report {study.study_name}"
            + (f" --storage {job.storage}" if job.storage else f" --root {job.root}"))
