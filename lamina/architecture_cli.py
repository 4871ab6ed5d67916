"""`lamina run --arch SPEC "question"` and `lamina import-archon CONFIG.json -o SPEC.yaml`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="answer a question with an inference-time architecture")
    run.add_argument("question", help="the question (use - to read it from stdin)")
    run.add_argument("--arch", help="architecture spec (YAML or JSON); default: one sample from --model")
    run.add_argument("--model", default="default", help="model for the single-model default (no --arch)")
    run.add_argument("--system", help="a system message to put before the question")
    run.add_argument("--test", action="append", dest="tests", metavar="ASSERT",
                     help="a unit test for unit_test components (repeatable), e.g. 'assert f(2) == 4'")
    run.add_argument("--cache", help="SQLite call cache (default: the spec's, else ~/.cache/lamina/calls.sqlite)")
    run.add_argument("--no-cache", action="store_true", help="make every call, store nothing")
    run.add_argument("--trace", help="append the full trace of this query to FILE as JSONL")
    run.add_argument("--candidates", action="store_true", help="also print every final candidate")
    run.set_defaults(func=run_command)

    imp = sub.add_parser("import-archon", help="convert an Archon JSON config into a Lamina spec")
    imp.add_argument("config", help="Archon config (JSON)")
    imp.add_argument("-o", "--output", help="where to write the YAML spec (default: stdout)")
    imp.set_defaults(func=import_command)


def run_command(args: argparse.Namespace) -> int:
    import asyncio

    from lamina.architecture import Architecture, write_trace

    question = sys.stdin.read() if args.question == "-" else args.question
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": question}]
    cache = False if args.no_cache else (args.cache or None)
    if args.arch:
        arch = Architecture.from_file(args.arch, cache=cache)
        arch.check()
    else:
        arch = Architecture.single_model(args.model, cache=cache)

    async def go():
        try:
            return await arch.run(messages, tests=args.tests)
        finally:
            await arch.aclose()

    result = asyncio.run(go())
    print(result.answer)
    if args.candidates:
        for i, text in enumerate(result.candidates):
            print(f"--- candidate {i}\n{text}")
    stop = " (budget: stopped early)" if result.stopped_by_budget else ""
    print(f"[{arch.name}] {result.usage.summary()} wall={result.seconds:.2f}s{stop}", file=sys.stderr)
    if args.trace:
        write_trace(args.trace, result, messages, arch.name)
    return 0


def import_command(args: argparse.Namespace) -> int:
    import yaml

    from lamina.archon import import_archon_file

    conversion = import_archon_file(args.config)
    header = "".join(f"# note: {n}\n" for n in conversion.notes)
    text = f"# Converted by `lamina import-archon {args.config}`\n{header}" + yaml.safe_dump(
        conversion.spec, sort_keys=False, allow_unicode=True)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output} ({sum(len(layer) for layer in conversion.spec['layers'])} components, "
              f"{len(conversion.spec['models'])} model aliases)")
    else:
        print(text, end="")
    return 0
