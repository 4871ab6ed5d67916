"""Step-level search on the embedded model: accuracy against generated tokens and reward calls.

Per task (TEST split) and per width W (4 budgets: W = 2, 4, 8, 16 paths), each method runs on the local engine's
branches with the generator's own mean token log-prob as the reward (no extra model): best-of-N (N = W),
weighted best-of-N, beam (W candidates per step, beam width 2), DVTS (W/2 subtrees), particle filtering (W
particles, resample temperature 0.5), A* (beam width 2, open set W x 2). Steps are lines ("\\n"); an answer has at
most `depth` steps of `step_max_tokens`. Reported: accuracy with a 95% Wilson interval, generated tokens and reward
calls per question, and the KV blocks a search held at its widest point against a copy per path (mean over
questions). Results are kept per question in the cache folder (JSONL), so a rerun resumes.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/search.py [--tasks arith-1,units-1] [--limit 20]
        [--widths 2,4,8,16] [--methods beam,dvts] [--threads 1] [--markdown]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from tqdm import tqdm

from lamina.backends.local import LocalBackend, shutdown_all
from lamina.decoding import SearchConfig, search
from lamina.engine.kernels import cpu_description
from lamina.eval.scorers import Scorer
from lamina.eval.stats import wilson_interval
from lamina.rewards import mean_logprob_reward

TASKS = ["arith-1", "units-1"]
METHODS = {"best_of_n": ("best_of_n", {}), "weighted_best_of_n": ("best_of_n", {"weighted": True}),
           "beam": ("beam", {}), "dvts": ("dvts", {}), "particle_filter": ("particle_filter", {}),
           "astar": ("astar", {})}
BEAM_WIDTH = 2
CONCURRENCY = 4  # questions searched at once (the engine batches their extensions)


def config(method: str, width: int, args) -> tuple[str, SearchConfig]:
    algorithm, extra = METHODS[method]
    return algorithm, SearchConfig(step_max_tokens=args.step_tokens, width=max(width, BEAM_WIDTH),
                                   beam_width=BEAM_WIDTH, depth=args.depth, temperature=args.temperature,
                                   seed=args.seed, resample_temperature=0.5, **extra)


async def run_cell(backend, task, scorer, examples, method: str, width: int, args, path: Path, bar) -> list[dict]:
    """Search every example (resuming from `path`); one JSON row per question."""
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            done[row["index"]] = row
    slots = asyncio.Semaphore(CONCURRENCY)
    algorithm, cfg = config(method, width, args)
    start, tokens = time.perf_counter(), 0

    async def one(index: int, example) -> dict:
        nonlocal tokens
        if index in done:
            bar.update(1)
            return done[index]
        async with slots:
            messages = task.messages(example)
            result = await search(algorithm, backend, mean_logprob_reward(), messages, cfg)
            score = await scorer.score(result.answer, example, messages[-1]["content"])
        blocks = result.blocks
        row = {"index": index, "correct": score.value, "tokens": result.usage.completion_tokens,
               "prompt_tokens": result.usage.prompt_tokens, "cached": result.usage.cached_prompt_tokens,
               "reward_calls": result.usage.reward_calls, "requests": result.usage.requests,
               "kv_used": blocks.num_used_blocks if blocks else None,
               "kv_copy": blocks.num_copy_per_path_blocks if blocks else None, "stopped": result.stopped}
        with path.open("a") as out:
            out.write(json.dumps(row) + "\n")
        tokens += row["tokens"]
        bar.set_postfix_str(f"{tokens / max(time.perf_counter() - start, 1e-9):.0f} tok/s")
        bar.update(1)
        return row

    return list(await asyncio.gather(*(one(i, e) for i, e in enumerate(examples))))


def summarize(task: str, method: str, width: int, rows: list[dict]) -> dict:
    n = len(rows)
    right = sum(r["correct"] for r in rows)
    low, high = wilson_interval(right, n)
    kv = [r for r in rows if r["kv_used"] is not None]
    return {"task": task, "method": method, "width": width, "n": n, "accuracy": right / n if n else 0.0,
            "ci": [low, high], "tokens": sum(r["tokens"] for r in rows) / max(n, 1),
            "reward_calls": sum(r["reward_calls"] for r in rows) / max(n, 1),
            "kv_used": sum(r["kv_used"] for r in kv) / len(kv) if kv else None,
            "kv_copy": sum(r["kv_copy"] for r in kv) / len(kv) if kv else None}


def print_table(rows: list[dict], markdown: bool) -> None:
    head = ["task", "method", "W", "accuracy (95% CI)", "gen tok/q", "reward calls/q", "KV used / copy-per-path"]
    lines = []
    for r in rows:
        kv = "-" if r["kv_used"] is None else f"{r['kv_used']:.1f} / {r['kv_copy']:.1f}"
        lines.append([r["task"], r["method"], str(r["width"]),
                      f"{r['accuracy']:.3f} ({r['ci'][0]:.2f}-{r['ci'][1]:.2f})", f"{r['tokens']:.0f}",
                      f"{r['reward_calls']:.1f}", kv])
    if markdown:
        print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
        for line in lines:
            print("| " + " | ".join(line) + " |")
    else:
        widths = [max(len(x) for x in col) for col in zip(head, *lines)]
        for line in [head, *lines]:
            print("  ".join(x.ljust(w) for x, w in zip(line, widths)))


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in rows})
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.5), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for method in METHODS:
            pts = sorted((r for r in rows if r["task"] == task and r["method"] == method), key=lambda r: r["tokens"])
            if not pts:
                continue
            xs, ys = [p["tokens"] for p in pts], [p["accuracy"] for p in pts]
            err = [[y - p["ci"][0] for y, p in zip(ys, pts)], [p["ci"][1] - y for y, p in zip(ys, pts)]]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=method)
        ax.set_xscale("log")
        ax.set_xlabel("generated tokens per question")
        ax.set_ylabel("accuracy (95% Wilson CI)")
        ax.set_title(task)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


async def main_async(args) -> list[dict]:
    from lamina.tasks.task import load_task

    backend = LocalBackend("default", engine={"num_threads": args.threads, "kv_cache_memory_gb": 0.5})
    summaries = []
    try:
        for name in args.tasks:
            task = load_task(name)
            scorer = Scorer.from_spec(task.scorer)
            scorer.prepare()
            examples = task.examples("test", args.limit)
            for width in args.widths:
                for method in args.methods:
                    path = args.cache / f"{name}-{method}-w{width}-d{args.depth}-s{args.step_tokens}-seed{args.seed}.jsonl"
                    bar = tqdm(total=len(examples), desc=f"{name} {method} W={width}", unit="q", leave=False)
                    rows = await run_cell(backend, task, scorer, examples, method, width, args, path, bar)
                    bar.close()
                    summaries.append(summarize(name, method, width, rows))
    finally:
        shutdown_all()
    return summaries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--widths", default="2,4,8,16")
    parser.add_argument("--limit", type=int, default=None, help="questions per task (default: the whole test split)")
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--step-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=Path("runs/bench_search"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    args.tasks = args.tasks.split(",")
    args.methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"--methods: unknown {unknown}; known: {', '.join(METHODS)}")
    args.widths = [int(w) for w in args.widths.split(",")]
    args.cache.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"{cpu_description()}; {args.threads} thread(s)")
    summaries = asyncio.run(main_async(args))
    print_table(summaries, args.markdown)
    (args.out / "search.json").write_text(json.dumps({"cpu": cpu_description(), "threads": args.threads,
                                                      "rows": summaries}, indent=1))
    plot(summaries, args.out / "search.png")
    print(f"wrote {args.out / 'search.json'} and {args.out / 'search.png'}")


if __name__ == "__main__":
    main()
