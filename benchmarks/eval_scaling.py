"""Accuracy vs compute for the embedded SmolLM2-135M: one greedy call, majority vote over 4/8/16 samples (arith-1),
and best-of-N by executed tests (code-2). Runs are resumable SQLite stores; prints tables, writes a PNG.

    python benchmarks/eval_scaling.py [--math-limit 30] [--code-limit 16] [--runs-dir runs/eval_scaling]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lamina.architecture import Architecture  # noqa: E402
from lamina.eval.harness import EvalOptions, evaluate  # noqa: E402
from lamina.eval.stats import RunSummary  # noqa: E402
from lamina.eval.store import RunStore  # noqa: E402
from lamina.tasks.task import load_task  # noqa: E402

MATH_TASK, CODE_TASK = "arith-1", "code-2"


def generate(samples: int, temperature: float, max_tokens: int) -> dict:
    return {"type": "generate", "samples": samples, "temperature": temperature, "max_tokens": max_tokens}


def configs() -> list[tuple[str, dict]]:
    math = [(MATH_TASK, {"name": "greedy-1", "layers": [[generate(1, 0.0, 16)]]})]
    math += [(MATH_TASK, {"name": f"vote-{n}", "layers": [[generate(n, 0.7, 16)], [{"type": "vote", "extract": "number"}]]})
             for n in (4, 8, 16)]
    code = [(CODE_TASK, {"name": "greedy-1", "layers": [[generate(1, 0.0, 96)]]})]
    code += [(CODE_TASK, {"name": f"tests-best-of-{n}",
                          "layers": [[generate(n, 0.8, 96)], [{"type": "unit_test", "source": "given", "keep": "sort"}]]})
             for n in (4, 8)]
    return math + code


async def run_all(args: argparse.Namespace) -> dict[str, list[RunSummary]]:
    results: dict[str, list[RunSummary]] = {}
    for task_name, spec in configs():
        task = load_task(task_name)
        limit = args.math_limit if task_name == MATH_TASK else args.code_limit
        arch = Architecture.from_spec(spec, f"eval_scaling:{spec['name']}", cache=False)
        path = Path(args.runs_dir) / f"{task_name}__{spec['name']}.sqlite"
        try:
            with RunStore(path) as store:
                summary, failures = await evaluate(arch, task, store, EvalOptions(args.split, limit, args.concurrency))
        finally:
            await arch.aclose()
        if failures:
            print(f"{task_name}/{spec['name']}: {len(failures)} examples failed; rerun to retry", file=sys.stderr)
        results.setdefault(task_name, []).append(summary)
    return results


def table(task: str, summaries: list[RunSummary]) -> str:
    base = summaries[0]
    head = ["config", "n", "accuracy", "95% CI", "tokens/ex", "calls/ex", "sec/ex", "acc - greedy", "tokens x greedy",
            "coverage (pass@N)"]
    rows = [head]
    for s in summaries:
        coverage = f"{s.pass_at[max(s.pass_at)]:.3f} (N={max(s.pass_at)})" if s.pass_at else "-"
        rows.append([s.name, str(s.examples), f"{s.accuracy:.3f}", f"[{s.ci_low:.2f}, {s.ci_high:.2f}]",
                     f"{s.tokens:.0f}", f"{s.calls:.1f}", f"{s.seconds:.1f}", f"{s.accuracy - base.accuracy:+.3f}",
                     f"{s.tokens / base.tokens:.1f}x" if base.tokens else "-", coverage])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [f"== {task} (peer: {base.name}, measured in the same run)"]
    lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(2, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot(results: dict[str, list[RunSummary]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, (task, summaries) in zip(axes[0], results.items()):
        xs, ys = [s.tokens for s in summaries], [s.accuracy for s in summaries]
        err = [[s.accuracy - s.ci_low for s in summaries], [s.ci_high - s.accuracy for s in summaries]]
        ax.errorbar(xs, ys, yerr=err, fmt="o-", capsize=4, label="accuracy of the final answer")
        sampled = [s for s in summaries if s.pass_at]
        if sampled:
            ax.plot([s.tokens for s in sampled], [s.pass_at[max(s.pass_at)] for s in sampled], "x--", color="gray",
                    label="coverage: any sample correct (pass@N)")
        for s in summaries:
            ax.annotate(s.name, (s.tokens, s.accuracy), textcoords="offset points", xytext=(5, 5), fontsize=8)
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"SmolLM2-135M on {task} (n={summaries[0].examples})")
        ax.set_xlabel("mean tokens per example (log)")
        ax.set_ylabel("accuracy (95% Wilson CI)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--math-limit", type=int, default=30)
    parser.add_argument("--code-limit", type=int, default=16)
    parser.add_argument("--split", default="dev")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--runs-dir", default="runs/eval_scaling")
    parser.add_argument("--plot", default="benchmarks/results/eval_scaling.png")
    args = parser.parse_args()
    results = asyncio.run(run_all(args))
    for task, summaries in results.items():
        print(table(task, summaries) + "\n")
    plot(results, Path(args.plot))
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
