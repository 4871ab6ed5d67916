"""`lamina` command line: each subsystem registers its own subcommands; heavy imports happen only when one runs."""
from __future__ import annotations

import argparse
import importlib
import sys

from lamina.errors import LaminaError

# Modules that define `register(subparsers)`; each subcommand sets `func=` on its parser.
COMMAND_MODULES = (
    "lamina.engine.cli",  # generate, chat, bench
    "lamina.architecture_cli",  # run, import-archon
    "lamina.eval.cli",  # eval, report
    "lamina.server.cli",  # serve
    "lamina.search.cli",  # search run, search report
    "lamina.verifiers.cli",  # verifier train, verifier eval
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lamina", description="Inference-time architectures for language models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except LaminaError as exc:
        print(f"lamina: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lamina: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
