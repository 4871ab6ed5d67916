"""Architecture search against hand-written architectures, on the held-out test split of bundled tasks.

For each task: a short search on the dev split (default space, TPE, successive halving, one call cache shared by
the trials), then on the test split: the found spec, one greedy call, and the best shipped example
(examples/architectures/*.yaml on the embedded model, chosen on the same dev examples). Prints a table with 95%
intervals and the search's own cost (tokens its trials spent, minutes its trials ran); writes OUT.md, OUT.json and
OUT.png (default benchmarks/results/search_arch). Everything is resumable (studies and run stores under --root).
`--compare-plain [TASK ...]` also runs the same search without successive halving (every trial on every example, in
its own study and call cache) to measure what halving saves.

    python benchmarks/search_arch.py [--tasks arith-1 units-1 code-2] [--trials 20] [--limit 30] [--test-limit 100]
    python benchmarks/search_arch.py --tasks arith-1 --trials 3 --limit 3 --min-examples 1 --test-limit 2 \\
        --compare-plain --root /tmp/smoke --out /tmp/smoke/search_arch                    # smoke run

Target (issue 14): beats greedy by at least 10 points on the test split of at least two tasks.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lamina.search.driver import SearchJob, run_search  # noqa: E402
from lamina.search.report import greedy_spec, report, rescore  # noqa: E402
from lamina.search.space import load_space, spec_hash  # noqa: E402
from lamina.search.study import SearchSettings, halving_rungs  # noqa: E402
from lamina.spec import read_spec_file  # noqa: E402
from lamina.tasks.task import load_task  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "architectures"


def embedded_only(spec: dict) -> bool:
    """Whether a shipped example uses only the embedded model (the search space's model; ensembles need others)."""
    return all(alias.get("model") in ("default", "smollm2-135m") for alias in spec.get("models", {}).values())


def search_cost(study) -> tuple[int, float]:
    """(tokens the study's trials spent, minutes its trials ran): summed over trials, so a resumed study counts the
    work of every run (repeated proposals and constraint-pruned trials cost nothing)."""
    tokens = sum(int(t.user_attrs.get("spent_tokens", 0)) for t in study.trials)
    seconds = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in study.trials
                  if t.datetime_start is not None and t.datetime_complete is not None)
    return tokens, seconds / 60


def run_task(task: str, args: argparse.Namespace, plain: bool = False) -> dict:
    space = load_space(args.space)
    rungs = [args.limit] if plain else halving_rungs(args.limit, args.min_examples, args.eta)
    settings = SearchSettings(task, space.raw, space.source, "dev", args.strategy, rungs, args.eta, args.seed,
                              args.threads or None, args.concurrency)
    name = f"{task}-{args.strategy}{'-plain' if plain else ''}"
    study = run_search(SearchJob(name, settings, args.trials, root=args.root, progress=not args.no_progress))
    tokens, minutes = search_cost(study)
    states = [t.state.name.lower() for t in study.trials if "duplicate_of" not in t.user_attrs]
    out = {"name": name, "minutes": minutes, "tokens": tokens, "rungs": rungs,
           "trials": {s: states.count(s) for s in sorted(set(states))},
           "repeated_proposals": sum("duplicate_of" in t.user_attrs for t in study.trials),
           "constraint_pruned": sum("pruned_because" in t.user_attrs for t in study.trials)}
    if plain:
        return out
    text = io.StringIO()
    found = report(name, root=args.root, progress=not args.no_progress, out=text)
    out["report"] = text.getvalue()
    directory = Path(args.root) / name
    max_tokens = load_task(task).spec.max_tokens
    best = found.get("best")
    specs = ([(f"found-{spec_hash(best.spec)[:8]}", best.spec)] if best else []) + \
        [("greedy-1-call", greedy_spec(settings, max_tokens))]
    test = rescore(specs, settings, directory, args.test_limit, not args.no_progress)
    shipped = [(p.stem, spec) for p in sorted(EXAMPLES.glob("*.yaml")) for spec in [read_spec_file(p)]
               if (p.stem != "code_unit_tests" or load_task(task).scorer.kind == "code") and embedded_only(spec)]
    on_dev = rescore(shipped, settings, directory, args.limit, not args.no_progress, split="dev")
    (label, spec), _ = max(zip(shipped, on_dev), key=lambda pair: (pair[1].accuracy, -pair[1].tokens))
    shipped_test = rescore([(f"shipped-{label}", spec)], settings, directory, args.test_limit,
                           not args.no_progress)[0]
    out.update(found=test[0] if best else None, greedy=test[-1], shipped=shipped_test,
               found_dev=None if best is None else {"trial": best.number, "stack": best.stack, "params": best.params,
                                                    "accuracy": best.accuracy, "ci95": [best.ci_low, best.ci_high],
                                                    "examples": best.examples, "tokens_per_example": best.tokens,
                                                    "spec": best.spec},
               shipped_dev={s.name: {"accuracy": s.accuracy, "ci95": [s.ci_low, s.ci_high],
                                     "tokens_per_example": s.tokens} for s in on_dev})
    return out


def row(task: str, config: str, summary, cost: str = "") -> str:
    if summary is None:
        return f"| {task} | {config} | - | - | - | - | {cost} |"
    return (f"| {task} | {config} | {summary.examples} | {summary.accuracy:.3f} | "
            f"[{summary.ci_low:.2f}, {summary.ci_high:.2f}] | {summary.tokens:.0f} | {cost} |")


def save(results: list[dict], table: list[str], args: argparse.Namespace) -> None:
    """The table (markdown), every number (JSON) and a plot of the test accuracies with their intervals."""
    import json

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = lambda s: None if s is None else s.to_dict()  # noqa: E731
    data = {"command": " ".join(sys.argv), "settings": {k: v for k, v in vars(args).items()},
            "tasks": [{**{k: v for k, v in r.items() if k not in ("found", "greedy", "shipped", "plain")},
                       "test": {k: summary(r.get(k)) for k in ("found", "greedy", "shipped")},
                       "plain": r.get("plain")} for r in results]}
    out.with_suffix(".json").write_text(json.dumps(data, indent=1, default=str))
    out.with_suffix(".md").write_text("\n".join(table) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    colours = {"found by search": "tab:green", "greedy, 1 call": "tab:gray", "best shipped example": "tab:blue"}
    for i, r in enumerate(results):
        for j, (label, key) in enumerate(zip(colours, ("found", "greedy", "shipped"))):
            s = r.get(key)
            if s is None:
                continue
            err = [[max(0.0, s.accuracy - s.ci_low)], [max(0.0, s.ci_high - s.accuracy)]]
            ax.bar(i + (j - 1) * 0.27, s.accuracy, 0.25, yerr=err, capsize=3, color=colours[label],
                   label=label if i == 0 else None)
    ax.set_xticks(range(len(results)), [f"{r['task']} (n={r['greedy'].examples})" for r in results])
    ax.set_ylabel("test accuracy (95% Wilson CI)")
    ax.set_ylim(0, 1.05)
    ax.set_title("architecture search vs greedy vs the best shipped example")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["arith-1", "units-1", "code-2"])
    parser.add_argument("--space", help="search space (default: the built-in default space)")
    parser.add_argument("--strategy", default="tpe")
    parser.add_argument("--trials", type=int, default=20, help="distinct architectures tried per task")
    parser.add_argument("--limit", type=int, default=30, help="dev examples a surviving trial is scored on")
    parser.add_argument("--min-examples", type=int, default=6)
    parser.add_argument("--eta", type=int, default=3)
    parser.add_argument("--test-limit", type=int, help="test examples scored (default: the whole test split)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--root", default="runs/bench_search")
    parser.add_argument("--compare-plain", nargs="*", metavar="TASK",
                        help="also run the search without halving, on these tasks (none named: every task)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "search_arch"),
                        help="writes OUT.md (the table), OUT.json, OUT.png")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()

    lines = ["| task | config (test split) | n | accuracy | 95% CI | tokens/ex | search cost |",
             "|---|---|---:|---:|---|---:|---|"]
    wins, results = 0, []
    for task in args.tasks:
        result = {"task": task, **run_task(task, args)}
        cost = f"{result['tokens']} tokens, {result['minutes']:.1f} min"
        if args.compare_plain is not None and (not args.compare_plain or task in args.compare_plain):
            plain = result["plain"] = run_task(task, args, plain=True)
            cost += (f" (plain search: {plain['tokens']} tokens, {plain['minutes']:.1f} min, "
                     f"{plain['tokens'] / max(1, result['tokens']):.2f}x the tokens)")
        lines += [row(task, "found by search", result["found"], cost), row(task, "greedy, 1 call", result["greedy"]),
                  row(task, f"best shipped example ({result['shipped'].name.split(' ')[0]})", result["shipped"])]
        if result["found"] is not None and result["found"].accuracy - result["greedy"].accuracy >= 0.10:
            wins += 1
        results.append(result)
        save(results, lines, args)  # after every task: a stopped run keeps what it measured
    print("\n".join(lines))
    verdict = (f"found spec beats greedy by >= 10 points on the test split of {wins} of {len(args.tasks)} task(s) "
               f"(target: at least 2)")
    print(f"\n{verdict}")
    Path(args.out).with_suffix(".md").write_text("\n".join(lines) + f"\n\n{verdict}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
