"""Does a learned verifier get better with more training questions? The outcome verifier (ORM) of
benchmarks/verifiers.py trained on nested subsets of its train split, scored on the same test samples.

Reads what `benchmarks/verifiers.py --tasks TASK --train-size N` kept in its cache folder (the train split's samples
and their feature blocks, the test split's samples and theirs); draws nothing and runs no model. Per task and subset
size: the ORM is fitted exactly as the benchmark fits it (features and L2 strength chosen by question-grouped
cross-validation on the subset, a quarter of its questions held out), then picks among the test split's 8 samples
per question: ORM best-of-8 and ORM-weighted vote, with 95% Wilson intervals, and the fraction of the gap between
majority vote and coverage@8 it closes (issue 13's target: at least half). The subsets are nested (the questions
each fits, 3/4 of its subset, need not be); with fraction 1 the fit is the benchmark's own ORM (one without
`--train-with`: sibling tasks' data is not added here). Prints the table, the CPU and threads, writes OUT.json
and OUT.png.

    OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/verifier_scaling.py [--tasks units-2,arith-3]
        [--train-size 1000] [--fractions 0.125,0.25,0.5,1]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

if __package__ in (None, ""):  # run as a script (python benchmarks/...): the repository root is not on the path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.verifiers import Drawn, accuracy, cpu_description, data_stem, for_task, per_task, picks, test_stem
from lamina.rewards.learned import VerifierInfo, assemble
from lamina.verifiers.train import Samples, fit_selected, load_blocks

HOLDOUT = 0.25  # as benchmarks/verifiers.py (train_verifier's default)


def generated_task(task: str) -> bool:
    """Whether the task is a generated family (its train split cached by size, else as "all")."""
    from lamina.tasks.task import load_task

    return load_task(task).spec.source.type == "generated"


def cached(args, task: str) -> dict:
    """The cache files of one task (benchmarks/verifiers.py's data_stem and test_stem, the full test split); SystemExit
    naming the missing file and the command that writes it."""
    train_size = for_task(args.train_size, task)
    generated = generated_task(task)
    train = data_stem(args, task, train_size if generated else "all")
    test = test_stem(args, task, None)
    paths = {"train_samples": Path(f"{train}.samples.json"), "train_blocks": Path(f"{train}.features.npz"),
             "test_samples": Path(f"{test}.samples.json"), "test_blocks": Path(f"{test}.features.npz"),
             "test_greedy": Path(f"{test}.greedy.json")}
    for path in paths.values():
        if not path.exists():
            sys.exit(f"{path}: not found; run first: OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/verifiers.py "
                     f"--tasks {task}{f' --train-size {train_size}' if generated else ''} --samples {args.samples} "
                     f"--temperature {args.temperature} --seed {args.seed} --cache {args.cache}")
    return paths


def subset(samples: Samples, blocks: dict, questions: list[str]) -> tuple[Samples, dict]:
    """The rows of `questions` only (samples and feature blocks alike)."""
    rows = samples.rows(set(questions))
    sub = Samples(question_ids=[samples.question_ids[i] for i in rows], labels=[samples.labels[i] for i in rows],
                  sequences=[samples.sequences[i] for i in rows], texts=[samples.texts[i] for i in rows],
                  starts=[samples.starts[i] for i in rows])
    return sub, {k: v[rows] for k, v in blocks.items()}


def run_task(task: str, args) -> dict:
    import random

    paths = cached(args, task)
    train = Samples.load(paths["train_samples"])
    train_blocks, layers, _ = load_blocks(paths["train_blocks"])
    test = Drawn.load(paths["test_samples"])
    test_blocks, test_layers, _ = load_blocks(paths["test_blocks"])
    if test_layers != layers:
        sys.exit(f"{paths['test_blocks']}: layers {test_layers}, the train blocks have {layers}")
    for name, rows, blocks in (("train", len(train.labels), train_blocks),
                               ("test", sum(len(labels) for labels in test.labels), test_blocks)):
        if len(blocks["last"]) != rows:
            sys.exit(f"{paths[name + '_blocks']}: {len(blocks['last'])} rows of features for {rows} samples in "
                     f"{paths[name + '_samples']} (a stale file: remove it and run benchmarks/verifiers.py again)")
    fixed = picks(test, [])  # the selectors the ORM does not change, as the benchmark picks them
    majority, coverage = fixed["majority"], fixed["coverage"]
    greedy = [labels[0] if labels else 0 for labels in Drawn.load(paths["test_greedy"]).labels]
    gap = (sum(coverage) - sum(majority)) / len(coverage)
    questions = sorted(set(train.question_ids))
    random.Random(args.seed).shuffle(questions)  # nested: a larger subset holds every smaller one
    sizes = sorted({max(8, round(f * len(questions))) for f in args.fractions if f > 0})
    points = []
    for size in tqdm(sizes, desc=f"{task} ORM fits", unit="fit"):
        sub, sub_blocks = subset(train, train_blocks, questions[:size])
        info = VerifierInfo(model="default", model_identity="", layers=[], task=task, split="train", seed=args.seed)
        start = time.perf_counter()
        try:
            verifier = fit_selected(sub, sub_blocks, layers, info, HOLDOUT)
        except ValueError as exc:
            sys.exit(f"{task}, {size} train questions: {exc} (a larger --fractions value)")
        seconds = time.perf_counter() - start
        it = iter(verifier.probe.predict(assemble(test_blocks, layers, info.layers, info.pooling)))
        test.scores["orm"] = [[float(next(it)) for _ in labels] for labels in test.labels]
        chosen = picks(test, ["orm"])  # the benchmark's own best-of-8 and weighted vote
        row = {"subset_questions": size, "train_questions": info.questions, "train_samples": info.samples,
               "layers": info.layers, "pooling": info.pooling, "reg": info.metrics["cv"]["chosen"]["reg"],
               "fit_seconds": seconds, "orm": accuracy(chosen["orm"]), "orm_vote": accuracy(chosen["orm_vote"])}
        for name in ("orm", "orm_vote"):
            row[name]["gap_closed"] = ((row[name]["accuracy"] - sum(majority) / len(majority)) / gap
                                       if gap > 0 else None)
        points.append(row)
    return {"task": task, "test_questions": len(test.labels), "train_split_questions": len(questions),
            "greedy": accuracy(greedy), "majority": accuracy(majority), "coverage": accuracy(coverage),
            "points": points}


def table(results: list[dict]) -> str:
    lines = ["| task | train questions fitted | ORM best-of-8 | gap closed | ORM-weighted vote | gap closed | "
             "greedy | majority@8 | coverage@8 |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for p in r["points"]:
            cells = [r["task"], str(p["train_questions"])]
            for name in ("orm", "orm_vote"):
                v = p[name]
                cells += [f"{v['accuracy']:.3f} [{v['ci95'][0]:.2f}, {v['ci95'][1]:.2f}]",
                          "-" if v["gap_closed"] is None else f"{v['gap_closed']:.2f}"]
            cells += [f"{r[name]['accuracy']:.3f}" for name in ("greedy", "majority", "coverage")]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, axes = plt.subplots(1, len(results), figsize=(4.6 * len(results), 3.8), squeeze=False)
    for ax, r in zip(axes.flat, results):
        x = [p["train_questions"] for p in r["points"]]
        for name, marker in (("orm", "o"), ("orm_vote", "s")):
            acc = [p[name]["accuracy"] for p in r["points"]]
            low = [p[name]["ci95"][0] for p in r["points"]]
            high = [p[name]["ci95"][1] for p in r["points"]]
            ax.plot(x, acc, marker=marker, label=name)
            ax.fill_between(x, low, high, alpha=0.15)
        for name, style, label in (("greedy", "-", "greedy"), ("majority", ":", "majority@8"),
                                   ("coverage", "--", "coverage@8")):
            ax.axhline(r[name]["accuracy"], linestyle=style, color="grey", linewidth=0.9, label=label)
        half = (r["majority"]["accuracy"] + r["coverage"]["accuracy"]) / 2
        ax.axhline(half, linestyle="-.", color="red", linewidth=0.8, label="half the gap")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(x, [str(v) for v in x])
        ax.set_xlabel("train questions fitted (x8 samples)")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{r['task']} (test, n={r['test_questions']})")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("ORM on SmolLM2-135M states vs training questions (95% Wilson intervals)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def fractions(text: str) -> list[float]:
    """`--fractions 0.25,0.5,1`; argparse error text on a bad value."""
    try:
        values = [float(f) for f in text.split(",") if f.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--fractions: {text!r} is not comma-separated numbers") from None
    if not values or any(not 0 < f <= 1 for f in values):
        raise argparse.ArgumentTypeError(f"--fractions: each must be in (0, 1], got {text!r}")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="units-2,arith-3")
    parser.add_argument("--train-size", type=lambda t: per_task(t, "--train-size"),
                        default=per_task("1000", "--train-size"),
                        help="the --train-size benchmarks/verifiers.py drew with (N or TASK=N,...; default 1000)")
    parser.add_argument("--fractions", default="0.125,0.25,0.5,1", type=fractions,
                        help="subset sizes as fractions of the cached train questions, each in (0, 1]")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=Path("runs/bench-verifiers"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/verifier_scaling"))
    args = parser.parse_args()
    import torch

    cpu, threads = cpu_description(), torch.get_num_threads()
    results = [run_task(t.strip(), args) for t in args.tasks.split(",") if t.strip()]
    print(f"\nORM vs training questions, SmolLM2-135M-Instruct, {args.samples} samples at T={args.temperature}; "
          f"CPU: {cpu}; {threads} thread(s)")
    print(table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"cpu": cpu, "threads": threads, "samples": args.samples,
                                                         "temperature": args.temperature, "seed": args.seed,
                                                         "holdout": HOLDOUT, "tasks": results}, indent=1))
    plot(results, args.out.with_suffix(".png"))
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
