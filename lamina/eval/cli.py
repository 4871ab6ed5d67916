"""`lamina eval` (score an architecture or a plain model on a task, resumable) and `lamina report RUN...`."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from lamina.engine.cli import add_sampling_arguments

    ev = sub.add_parser("eval", help="score an architecture (or one plain model call) on a task")
    who = ev.add_mutually_exclusive_group()
    who.add_argument("--arch", help="architecture spec (YAML/JSON)")
    who.add_argument("--model", help="baseline: one plain call to this model (default: 'default')")
    ev.add_argument("--task", required=True, help="a builtin task (arith-1..5, units-1..3, code-1..3, gsm8k, humaneval, gpqa-diamond, aime2025, arc-agi-1, arc-agi-2) or a task YAML")
    ev.add_argument("--split", help="split to score (default: the task's default_split; 'all' for every example)")
    ev.add_argument("--limit", type=int, help="score only the first N examples of the split")
    ev.add_argument("--concurrency", type=int, default=4, help="examples in flight at once (default 4)")
    ev.add_argument("--name", help="run name (default: ARCH__TASK__SPLIT); the store is RUNS_DIR/NAME.sqlite")
    ev.add_argument("--runs-dir", default="runs", help="folder for run stores (default: runs)")
    ev.add_argument("--out", help="explicit path of the run's SQLite store")
    add_sampling_arguments(ev, names=("temperature", "max_tokens", "seed"), temperature=0.0, max_tokens=None, seed=0,
                           title="sampling, with --model only (max-tokens None: the task's max_tokens)")
    ev.add_argument("--cache", help="SQLite call cache (default: none, so usage counts every real call)")
    ev.add_argument("--baseline", help="score by pairwise LLM judge against this baseline run's answers")
    ev.add_argument("--judge-model", default="default", help="judge model for --baseline (default: default)")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    ev.add_argument("--json", action="store_true", help="print the summary as JSON")
    ev.set_defaults(func=eval_command)

    rep = sub.add_parser("report", help="compare eval runs: table + PNG of accuracy vs tokens per example")
    rep.add_argument("runs", nargs="+", help="run stores (.sqlite) or folders of them")
    rep.add_argument("--plot", default="runs/report.png", help="where to write the PNG (default runs/report.png)")
    rep.add_argument("--title", default="Accuracy vs compute", help="plot title")
    rep.add_argument("--json", action="store_true", help="print the summaries as JSON instead of a table")
    rep.set_defaults(func=report_command)


def eval_command(args: argparse.Namespace) -> int:
    import asyncio

    from lamina.architecture import Architecture
    from lamina.errors import SpecError
    from lamina.eval.harness import EvalOptions, default_run_path, evaluate
    from lamina.eval.report import format_components, format_table
    from lamina.eval.store import RunStore
    from lamina.tasks.scorer_spec import ScorerSpec
    from lamina.tasks.task import load_task

    if args.limit is not None and args.limit < 1:
        raise SpecError(f"--limit must be at least 1, got {args.limit}")
    task = load_task(args.task)
    task.examples(args.split, args.limit)  # a bad split fails here, before any store or model is opened
    if args.baseline:
        task.scorer = ScorerSpec("judge", task.scorer.extract, {"baseline": args.baseline, "model": args.judge_model})
    cache = args.cache or False
    if args.arch:
        arch = Architecture.from_file(args.arch, cache=cache)
    else:
        arch = Architecture.single_model(args.model or "default", cache=cache, temperature=args.temperature,
                                         max_tokens=args.max_tokens or task.spec.max_tokens, seed=args.seed)
    options = EvalOptions(args.split, args.limit, args.concurrency, progress=not args.no_progress)
    split = args.split or task.spec.default_split
    path = Path(args.out) if args.out else (Path(args.runs_dir) / f"{args.name}.sqlite" if args.name
                                             else default_run_path(arch.name, task, split, args.runs_dir))

    async def go():
        try:
            with RunStore(path) as store:
                return await evaluate(arch, task, store, options)
        finally:
            await arch.aclose()

    summary, failures = asyncio.run(go())
    if args.json:
        print(json.dumps({**summary.to_dict(), "run": str(path), "failed": failures}, indent=1))
    else:
        print(format_table([summary]))
        components = format_components(summary)
        if components:
            print(components)
        print(f"run store: {path}")
    for example_id, error in failures:
        print(f"failed (not stored; rerun to retry): {example_id}: {error}", file=sys.stderr)
    return 1 if failures else 0


def report_command(args: argparse.Namespace) -> int:
    from lamina.eval.report import format_components, format_table, load_run, plot

    paths = [p for arg in args.runs for p in (sorted(Path(arg).glob("*.sqlite")) if Path(arg).is_dir() else [Path(arg)])]
    summaries = [load_run(p)[1] for p in paths]
    if args.json:
        print(json.dumps([s.to_dict() for s in summaries], indent=1))
    else:
        print(format_table(summaries))
        for s in summaries:
            if s.by_component and len(s.by_component) > 1:
                print(format_components(s))
    out = plot(summaries, args.plot, args.title)
    print(f"plot: {out}", file=sys.stderr)
    return 0
