"""`lamina search run` (start, continue or join an architecture search) and `lamina search report STUDY`."""
from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    search = sub.add_parser("search", help="search for the architecture that wins on a task (Optuna study)")
    commands = search.add_subparsers(dest="search_command", metavar="SUBCOMMAND")
    search.set_defaults(func=lambda args: search.print_help() or 2)

    run = commands.add_parser("run", help="start a search, continue it (rerun), or join it (--name, --storage)")
    run.add_argument("--task", help="task to search on (a builtin name or a task YAML); omit to join --name's study")
    run.add_argument("--space", help="search space YAML, or a built-in space name (default: the default space)")
    run.add_argument("--name", help="study name (default: TASK-STRATEGY); files under ROOT/NAME/")
    run.add_argument("--strategy", default="tpe", choices=("tpe", "nsga2", "random", "grid", "greedy"),
                     help="tpe (Bayesian), nsga2 (accuracy vs tokens Pareto front), random, grid, or greedy "
                          "(Archon's layer-by-layer construction); default tpe")
    run.add_argument("--trials", type=int, default=20, help="trials the study should hold in all (default 20)")
    run.add_argument("--split", default="dev", help="split the search scores on: dev (default) or train, never test")
    run.add_argument("--limit", type=int, default=30, help="examples a surviving trial is scored on (default 30)")
    run.add_argument("--min-examples", type=int, default=6,
                     help="successive halving: examples in the first rung (default 6)")
    run.add_argument("--eta", type=int, default=3, help="successive halving: keep the best 1/eta per rung (default 3)")
    run.add_argument("--no-halving", action="store_true", help="score every trial on all --limit examples")
    run.add_argument("--seed", type=int, default=0, help="the sampler's seed (default 0)")
    run.add_argument("--threads", type=int, default=1,
                     help="engine threads per worker (default 1; 0: every core)")
    run.add_argument("--concurrency", type=int, default=4, help="examples in flight per trial (default 4)")
    run.add_argument("--greedy-width", type=int, default=12, help="greedy: settings tried per layer type (default 12)")
    run.add_argument("--workers", type=int, default=1, help="worker processes on this machine sharing the study")
    run.add_argument("--storage", help="Optuna RDB URL, e.g. postgresql://user@host/db to share a study between "
                                       "machines (default: sqlite under ROOT/NAME/study.sqlite)")
    run.add_argument("--root", default="runs/search", help="folder for studies (default runs/search)")
    run.add_argument("--heartbeat", type=int, default=60,
                     help="seconds between a running trial's heartbeats; a trial silent for two is failed and "
                          "re-queued (default 60)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)  # set by --workers for its processes
    run.set_defaults(func=run_command)

    rep = commands.add_parser("report", help="trials, Pareto front, PNG, best specs as YAML; --test re-scores them")
    rep.add_argument("study", help="study name (under --root) or the study's SQLite file")
    rep.add_argument("--storage", help="Optuna RDB URL holding the study (default: ROOT/STUDY/study.sqlite)")
    rep.add_argument("--root", default="runs/search", help="folder for studies (default runs/search)")
    rep.add_argument("--plot", help="PNG path (default ROOT/STUDY/report.png)")
    rep.add_argument("--export", help="folder for best.yaml and pareto-*.yaml (default ROOT/STUDY/export)")
    rep.add_argument("--test", action="store_true",
                     help="re-score the best and Pareto specs, and one greedy call, on the held-out test split")
    rep.add_argument("--test-limit", type=int, help="score only the first N test examples")
    rep.add_argument("--top", type=int, default=30, help="trials listed (best first; default 30)")
    rep.add_argument("--no-progress", action="store_true", help="no progress bars")
    rep.set_defaults(func=report_command)


def run_command(args: argparse.Namespace) -> int:
    from lamina.errors import SpecError
    from lamina.search.driver import SearchJob, run_search
    from lamina.search.space import load_space
    from lamina.search.study import SearchSettings, check_settings, halving_rungs

    settings = None
    if args.task:
        if args.limit < 1:
            raise SpecError(f"--limit must be at least 1, got {args.limit}")
        space = load_space(args.space)
        rungs = [args.limit] if args.no_halving else halving_rungs(args.limit, args.min_examples, args.eta)
        settings = SearchSettings(args.task, space.raw, space.source, args.split, args.strategy, rungs, args.eta,
                                  args.seed, args.threads or None, args.concurrency, args.greedy_width)
        check_settings(settings)
        from lamina.tasks.task import load_task

        load_task(args.task).examples(args.split, args.limit)  # a bad task or split fails before any trial
    elif not args.name:
        raise SpecError("give --task to start a search, or --name (and --storage) to continue or join one")
    name = args.name or f"{args.task.replace('/', '-').removesuffix('.yaml')}-{args.strategy}"
    job = SearchJob(name, settings, args.trials, args.storage, args.root, args.workers, not args.no_progress,
                    args.heartbeat, args.worker_index)
    study = run_search(job)
    from lamina.search.report import summary_line

    print(summary_line(study, job))
    return 0


def report_command(args: argparse.Namespace) -> int:
    from lamina.search.report import report

    report(args.study, storage=args.storage, root=args.root, plot_path=args.plot, export_dir=args.export,
           test=args.test, test_limit=args.test_limit, top=args.top, progress=not args.no_progress, out=sys.stdout)
    return 0
