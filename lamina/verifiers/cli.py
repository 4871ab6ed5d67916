"""`lamina verifier train` (sample a task split, label, train a probe on hidden states, save) and `lamina verifier
eval` (AUROC, calibration and best-of-N selection accuracy of a verifier file on a split)."""
from __future__ import annotations

import argparse
import json
import sys


def _common(p: argparse.ArgumentParser, split: str) -> None:
    p.add_argument("--task", required=True, help="a builtin task (e.g. arith-1) or a task YAML")
    p.add_argument("--split", default=split, help=f"split to sample (default {split})")
    p.add_argument("--samples", type=int, default=8, help="samples per question (default 8)")
    p.add_argument("--limit", type=int, help="only the first N questions of the split")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (default 0.8)")
    p.add_argument("--max-tokens", type=int, help="per sample (default: the task's max_tokens)")
    p.add_argument("--seed", type=int, default=0, help="sampling and probe seed (default 0)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")


def register(sub: argparse._SubParsersAction) -> None:
    ver = sub.add_parser("verifier", help="train or evaluate a learned verifier on a model's hidden states")
    vsub = ver.add_subparsers(dest="verifier_command", metavar="ACTION", required=True)
    train = vsub.add_parser("train", help="sample a task split, label with its scorer, train a probe, save it")
    train.add_argument("--model", default="default", help="local model name or path (default: default)")
    _common(train, "train")
    train.add_argument("--layers", help="hidden-state layers, comma-separated (default: the middle and the last)")
    train.add_argument("--train-size", type=int, help="a generated task: draw this many train questions (dev and "
                       "test stay the same questions)")
    train.add_argument("--holdout", type=float, default=0.25, help="fraction of questions held out for metrics")
    train.add_argument("--kind", choices=["orm", "prm"], default="orm", help="orm: outcome verifier (the answer's "
                       "last token); prm: process verifier (each line's last token, labelled by rollouts)")
    train.add_argument("--probe", choices=["logistic", "mlp"], default="logistic",
                       help="logistic regression (default) or a one-hidden-layer MLP (scikit-learn)")
    train.add_argument("--no-select", action="store_true", help="orm: the plain probe (last-token states of --layers, "
                       "default strength) instead of features and L2 strength chosen by cross-validation on the "
                       "training questions")
    train.add_argument("--technique", choices=["generate", "program"], default="generate",
                       help="orm: what it learns to judge: sampled answers (default), or sampled programs (the "
                       "`program` technique, each labelled by what it prints in the sandbox) for vote weights and "
                       "rewards over program candidates")
    train.add_argument("--rollouts", type=int, default=4, help="prm: continuations per step prefix (default 4)")
    train.add_argument("--max-steps", type=int, default=8, help="prm: most steps (lines) per answer (default 8)")
    train.add_argument("--out", required=True, help="the verifier file to write (JSON)")
    train.set_defaults(func=train_command)
    ev = vsub.add_parser("eval", help="AUROC, calibration (ECE) and best-of-N selection accuracy on a split (a "
                         "process verifier is judged by its score of each answer's last step)")
    ev.add_argument("verifier", help="a verifier file")
    ev.add_argument("--model", help="local model (default: the one the verifier was trained with)")
    _common(ev, "dev")
    ev.set_defaults(func=eval_command)


def _check(args: argparse.Namespace) -> None:
    from lamina.errors import SpecError

    if args.samples < 1 or (args.limit is not None and args.limit < 1):
        raise SpecError(f"--samples and --limit must be at least 1 (got {args.samples}, {args.limit})")


def _print(metrics: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(metrics, indent=1))
        return
    for key, value in metrics.items():
        if key == "cv" and isinstance(value, dict):  # every candidate is in the file; the choice is what matters here
            value = f"chosen {value.get('chosen')} among {len(value.get('tried', []))} by {value.get('folds')}-fold CV"
        print(f"{key:>22}: {value:.3f}" if isinstance(value, float) else f"{key:>22}: {value}")


def _writable(path: str):
    """`path` as a Path once its folder exists (created) and a file can be written there, checked before any
    sampling so a long run never ends unable to save; SpecError naming --out otherwise."""
    import os
    from pathlib import Path

    from lamina.errors import SpecError

    out = Path(path)
    if out.is_dir():
        raise SpecError(f"--out {path}: a folder; give the verifier file's path (e.g. {out / 'verifier.json'})")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpecError(f"--out {path}: cannot create its folder: {exc}") from None
    if out.exists() and not os.access(out, os.W_OK):
        raise SpecError(f"--out {path}: not writable")
    probe = out.parent / f".{out.name}.{os.getpid()}.probe"  # a real write: os.access says yes to root anywhere
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise SpecError(f"--out {path}: cannot write a file in {out.parent}: {exc.strerror or exc}") from None
    return out


def _check_layers(model: str, layers: list[int]) -> None:
    """SpecError naming --layers when a layer is out of `model`'s range (loads the model, before any sampling)."""
    from lamina.backends.local import shared_engine
    from lamina.engine.hidden_states import resolve_layers
    from lamina.errors import InvalidRequestError, SpecError

    count = len(shared_engine(model, kv_cache_memory_gb=0.25).engine.model.layers)
    try:
        resolve_layers(layers, count)
    except InvalidRequestError as exc:
        raise SpecError(f"--layers: {exc}") from None


def train_command(args: argparse.Namespace) -> int:
    import asyncio

    from lamina.errors import SpecError
    from lamina.tasks.task import load_task
    from lamina.verifiers.train import grow_train, train_verifier

    _check(args)
    if not 0 < args.holdout < 1:
        raise SpecError(f"--holdout must be in (0, 1), got {args.holdout}")
    if args.rollouts < 1 or args.max_steps < 1:
        raise SpecError(f"--rollouts and --max-steps must be at least 1 (got {args.rollouts}, {args.max_steps})")
    try:
        layers = [int(x) for x in args.layers.split(",")] if args.layers is not None else None
    except ValueError:
        raise SpecError(f"--layers: comma-separated integers, got {args.layers!r}") from None
    if layers is not None and len(set(layers)) != len(layers):
        raise SpecError(f"--layers: each layer once, got {args.layers!r}")
    if args.kind == "prm" and args.technique != "generate":
        raise SpecError(f"--technique {args.technique}: a process verifier (--kind prm) learns from sampled answers' "
                        "steps only")
    out = _writable(args.out)
    task = load_task(args.task)
    if args.train_size is not None:
        grow_train(task, args.train_size)
        held = len(task.examples("train"))
        if held < args.train_size:
            print(f"note: {task.name} has {held} distinct train questions, fewer than --train-size "
                  f"{args.train_size} asked (its family holds no more)", file=sys.stderr)
    task.examples(args.split, args.limit)
    if layers:
        _check_layers(args.model, layers)
    common = dict(seed=args.seed, temperature=args.temperature, layers=layers, holdout=args.holdout,
                  max_tokens=args.max_tokens)
    try:
        if args.kind == "prm":
            from lamina.verifiers.process import train_process_verifier

            verifier = asyncio.run(train_process_verifier(args.model, task, args.split, args.samples, args.limit,
                                                          rollouts=args.rollouts, max_steps=args.max_steps,
                                                          probe=args.probe, **common))
        else:
            verifier, = asyncio.run(train_verifier(args.model, task, args.split, args.samples, args.limit,
                                                   probes=(args.probe,), select=not args.no_select,
                                                   technique=args.technique, **common))
    except ValueError as exc:
        raise SpecError(f"cannot train a verifier on {args.task} {args.split}: {exc}") from None
    verifier.save(out)
    unit = "steps" if args.kind == "prm" else "samples"
    print(f"wrote {args.out}: {verifier.info.kind} verifier, {verifier.info.samples} {unit} of "
          f"{verifier.info.questions} questions, "
          f"layers {verifier.info.layers}; held out:")
    _print(verifier.info.metrics, args.json)
    return 0


def eval_command(args: argparse.Namespace) -> int:
    import asyncio

    from lamina.rewards.learned import load_verifier
    from lamina.tasks.task import load_task
    from lamina.verifiers.train import evaluate_verifier

    _check(args)
    verifier = load_verifier(args.verifier)
    task = load_task(args.task)
    task.examples(args.split, args.limit)
    model = args.model or verifier.info.model
    _print(asyncio.run(evaluate_verifier(verifier, model, task, args.split, args.samples, args.limit, seed=args.seed,
                                         temperature=args.temperature, max_tokens=args.max_tokens)), args.json)
    return 0
