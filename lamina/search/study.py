"""A search study: its settings, Optuna RDB storage (SQLite by default, PostgreSQL to share it between machines),
sampler and pruner. The settings are stored in the study, so a rerun (or a joining worker) runs the same search."""
from __future__ import annotations

import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lamina.errors import SpecError

STRATEGIES = ("tpe", "nsga2", "random", "grid", "greedy")
MULTI_OBJECTIVE = frozenset({"nsga2"})  # maximise accuracy, minimise tokens per example: a Pareto front
SETTINGS_ATTR = "lamina_settings"
# What a rerun or a joining worker must agree on: the search itself. Trials, workers and progress may differ.
IDENTITY = ("task", "split", "space", "strategy", "rungs", "seed", "threads")


@dataclass(slots=True)
class SearchSettings:
    task: str
    space: dict[str, Any]  # the space's YAML data, so a joining machine needs no file
    space_source: str = "<dict>"
    split: str = "dev"
    strategy: str = "tpe"
    rungs: list[int] = field(default_factory=lambda: [8])  # examples scored at each successive-halving rung
    eta: int = 3  # successive halving keeps the best 1/eta of the trials at each rung
    seed: int = 0  # the sampler's seed
    threads: int | None = 1  # engine threads per worker process (None: every core)
    concurrency: int = 4  # examples in flight per trial
    greedy_width: int = 12  # greedy: settings tried per layer type in each round

    @property
    def objectives(self) -> list[str]:
        return ["maximize", "minimize"] if self.strategy in MULTI_OBJECTIVE else ["maximize"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_settings(settings: SearchSettings) -> None:
    if settings.strategy not in STRATEGIES:
        raise SpecError(f"--strategy: expected one of {', '.join(STRATEGIES)}, got {settings.strategy!r}")
    if settings.split == "test":
        raise SpecError("--split: a search never evaluates the test split (it is held out for `lamina search "
                        "report --test`); use dev or train, got 'test'")
    if not settings.rungs or any(r < 1 for r in settings.rungs) or settings.rungs != sorted(set(settings.rungs)):
        raise SpecError(f"--rungs: increasing example counts >= 1, got {settings.rungs}")
    if settings.eta < 2:
        raise SpecError(f"--eta: at least 2, got {settings.eta}")


def halving_rungs(limit: int, min_examples: int, eta: int) -> list[int]:
    """min_examples, min_examples*eta, ... below `limit`, then `limit`: successive halving's rungs."""
    rungs, r = [], max(1, min_examples)
    while r < limit:
        rungs.append(r)
        r *= eta
    return rungs + [limit]


def study_dir(name: str, root: str | Path = "runs/search") -> Path:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise SpecError(f"study name: letters, digits, '_', '.', '-' only, got {name!r}")
    return Path(root) / name


def open_storage(url: str, heartbeat_s: int = 60):
    """Optuna's RDB storage with heartbeats: a trial whose process died (kill -9) stops beating, is marked FAIL after
    2 heartbeats and re-queued once with the same parameters (its run store keeps the examples it finished)."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    url = _postgres_driver(url)
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat_s, grace_period=2 * heartbeat_s,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))
    except Exception as exc:  # sqlalchemy's errors: a bad URL, an unreachable server, a missing driver
        raise SpecError(f"--storage {url}: cannot open the study storage ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0]})") from None


def _postgres_driver(url: str) -> str:
    """postgresql://... with the driver installed: SQLAlchemy 2.1 defaults to psycopg 3; psycopg2 works as well."""
    import importlib.util

    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def default_storage(directory: Path) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{directory / 'study.sqlite'}"


def make_sampler(settings: SearchSettings, grid: dict[str, list[Any]] | None = None, worker: int | None = None):
    """The strategy's sampler. Workers sharing a study each get their own seed (`worker`: its index), else they
    would all propose the same sequence of trials."""
    import optuna

    seed = settings.seed if worker is None else settings.seed + 7919 * (worker + 1)
    if settings.strategy == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)
    if settings.strategy == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
    if settings.strategy == "grid":
        return optuna.samplers.GridSampler(grid or {}, seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)  # random, and greedy (whose trials fix every parameter)


def make_pruner(settings: SearchSettings):
    import optuna

    if len(settings.rungs) < 2 or settings.strategy in MULTI_OBJECTIVE:
        return optuna.pruners.NopPruner()  # multi-objective studies prune by domination (objective.py)
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=settings.rungs[0], reduction_factor=settings.eta)


def create_or_load(name: str, storage: Any, settings: SearchSettings | None, grid: dict[str, list[Any]] | None = None,
                   worker: int | None = None):
    """(study, settings): a new study with `settings`, or the existing one whose stored settings must agree.
    `settings` None: load an existing study as it is (report, join)."""
    import optuna

    existing = stored_settings(storage, name)
    if settings is None:
        if existing is None:
            raise SpecError(f"no search study named {name!r} in {_storage_name(storage)}")
        settings = existing
    elif existing is not None:
        clash = [k for k in IDENTITY if getattr(existing, k) != getattr(settings, k)]
        if clash:
            shown = ", ".join(f"{k}: stored {_short(getattr(existing, k))} vs now {_short(getattr(settings, k))}"
                              for k in clash)
            raise SpecError(f"study {name!r} holds a different search ({shown}); choose another --name")
    check_settings(settings)
    study = optuna.create_study(storage=storage, study_name=name, load_if_exists=True,
                                directions=settings.objectives, sampler=make_sampler(settings, grid, worker),
                                pruner=make_pruner(settings))
    if existing is None:
        study.set_user_attr(SETTINGS_ATTR, settings.to_dict())
    return study, settings


def stored_settings(storage: Any, name: str) -> SearchSettings | None:
    """The settings a study was created with; None when there is no such study."""
    import optuna

    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None
    raw = study.user_attrs.get(SETTINGS_ATTR)
    if raw is None:
        raise SpecError(f"study {name!r} in {_storage_name(storage)} is not a Lamina search (no settings)")
    return SearchSettings(**raw)


def _storage_name(storage: Any) -> str:
    return str(getattr(getattr(storage, "engine", None), "url", storage))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
