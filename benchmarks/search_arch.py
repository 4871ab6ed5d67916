"""Architecture search against hand-written architectures, on the held-out test split of bundled tasks.

For each task: a short search on the dev split (default space, TPE, successive halving, shared call cache), then on
the test split: the found spec, one greedy call, and the best shipped example (examples/architectures/*.yaml,
chosen on dev). Prints a table with 95% intervals and the search's own cost (tokens spent, minutes). Everything is
resumable (studies and run stores under --root). `--compare-plain` also runs the same search without successive
halving (and without the shared call cache) to measure what they save.

    python benchmarks/search_arch.py [--tasks arith-1 units-1 code-2] [--trials 20] [--limit 30] [--test-limit 100]
    python benchmarks/search_arch.py --tasks arith-1 --trials 2 --limit 2 --test-limit 2     # smoke run

Target (issue 14): beats greedy by at least 10 points on the test split of at least two tasks.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lamina.search.driver import SearchJob, run_search  # noqa: E402
from lamina.search.report import greedy_spec, report, rescore  # noqa: E402
from lamina.search.space import load_space  # noqa: E402
from lamina.search.study import SearchSettings, halving_rungs  # noqa: E402
from lamina.spec import read_spec_file  # noqa: E402
from lamina.tasks.task import load_task  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "architectures"


def embedded_only(spec: dict) -> bool:
    """Whether a shipped example uses only the embedded model (the search space's model; ensembles need others)."""
    return all(alias.get("model") in ("default", "smollm2-135m") for alias in spec.get("models", {}).values())


def search_cost(study) -> int:
    return sum(int(t.user_attrs.get("spent_tokens", 0)) for t in study.trials)


def run_task(task: str, args: argparse.Namespace, plain: bool = False) -> dict:
    space = load_space(args.space)
    rungs = [args.limit] if plain else halving_rungs(args.limit, args.min_examples, args.eta)
    settings = SearchSettings(task, space.raw, space.source, "dev", args.strategy, rungs, args.eta, args.seed,
                              args.threads or None, args.concurrency)
    name = f"{task}-{args.strategy}{'-plain' if plain else ''}"
    start = time.perf_counter()
    study = run_search(SearchJob(name, settings, args.trials, root=args.root, progress=not args.no_progress))
    minutes = (time.perf_counter() - start) / 60
    out = {"name": name, "minutes": minutes, "tokens": search_cost(study), "settings": settings}
    if plain:
        return out
    found = report(name, root=args.root, test=True, test_limit=args.test_limit, progress=not args.no_progress,
                   out=io.StringIO())
    directory = Path(args.root) / name
    shipped = [(p.stem, spec) for p in sorted(EXAMPLES.glob("*.yaml")) for spec in [read_spec_file(p)]
               if (p.stem != "code_unit_tests" or load_task(task).scorer.kind == "code") and embedded_only(spec)]
    on_dev = rescore(shipped, settings, directory, args.limit, not args.no_progress, split="dev")
    best_shipped = max(zip(shipped, on_dev), key=lambda pair: (pair[1].accuracy, -pair[1].tokens))[0]
    label, spec = best_shipped
    shipped_test = rescore([(f"shipped-{label}", spec)], settings, directory, args.test_limit,
                           not args.no_progress)[0]
    test = found.get("test", [])
    greedy_test = next((s for s in test if s.name.startswith("greedy-1-call")), None)
    if greedy_test is None:  # no finished trial: still score the baseline
        greedy_test = rescore([("greedy-1-call", greedy_spec(settings, load_task(task).spec.max_tokens))], settings,
                              directory, args.test_limit, not args.no_progress)[0]
    out.update(found=test[0] if test and found.get("best") else None, greedy=greedy_test, shipped=shipped_test)
    return out


def row(task: str, config: str, summary, cost: str = "") -> str:
    if summary is None:
        return f"| {task} | {config} | - | - | - | - | {cost} |"
    return (f"| {task} | {config} | {summary.examples} | {summary.accuracy:.3f} | "
            f"[{summary.ci_low:.2f}, {summary.ci_high:.2f}] | {summary.tokens:.0f} | {cost} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["arith-1", "units-1", "code-2"])
    parser.add_argument("--space", help="search space (default: the built-in default space)")
    parser.add_argument("--strategy", default="tpe")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--limit", type=int, default=30, help="dev examples a surviving trial is scored on")
    parser.add_argument("--min-examples", type=int, default=6)
    parser.add_argument("--eta", type=int, default=3)
    parser.add_argument("--test-limit", type=int, help="test examples scored (default: the whole test split)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--root", default="runs/bench_search")
    parser.add_argument("--compare-plain", action="store_true", help="also run the search without halving")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()

    lines = ["| task | config (test split) | n | accuracy | 95% CI | tokens/ex | search cost |",
             "|---|---|---:|---:|---|---:|---|"]
    wins = 0
    for task in args.tasks:
        result = run_task(task, args)
        cost = f"{result['tokens']} tokens, {result['minutes']:.1f} min"
        if args.compare_plain:
            plain = run_task(task, args, plain=True)
            cost += (f" (plain search: {plain['tokens']} tokens, {plain['minutes']:.1f} min, "
                     f"{plain['tokens'] / max(1, result['tokens']):.2f}x the tokens)")
        lines += [row(task, "found by search", result["found"], cost), row(task, "greedy, 1 call", result["greedy"]),
                  row(task, f"best shipped example ({result['shipped'].name.split(' ')[0]})", result["shipped"])]
        if result["found"] is not None and result["found"].accuracy - result["greedy"].accuracy >= 0.10:
            wins += 1
    print("\n".join(lines))
    print(f"\nfound spec beats greedy by >= 10 points on the test split of {wins} of {len(args.tasks)} task(s) "
          f"(target: at least 2)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
