"""`lamina serve`: local models and architectures over the OpenAI HTTP API."""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from lamina.errors import InvalidRequestError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="serve models and architectures over the OpenAI HTTP API",
                              description="Serve local models (by name) and architectures (as arch:<name>) over "
                                          "/v1/chat/completions, /v1/completions and /v1/models.")
    p.add_argument("--model", action="append", metavar="[NAME=]MODEL",
                   help="'default' (the embedded SmolLM2-135M-Instruct), a .gguf file or a safetensors folder; "
                        "served as NAME, else as the given string (repeatable; default: 'default')")
    p.add_argument("--arch", action="append", default=[], metavar="SPEC",
                   help="architecture spec file (YAML/JSON), served as arch:<its name> (repeatable); its local "
                        "models share the engines loaded by --model when the names match")
    p.add_argument("--arch-cache", default=None, metavar="PATH|none",
                   help="SQLite call cache for architectures (default: each spec's own, else "
                        "~/.cache/lamina/calls.sqlite; 'none' disables it)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("LAMINA_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1/* (default: $LAMINA_API_KEY, else none)")
    p.add_argument("--max-queue", type=int, default=256,
                   help="most generation requests in flight at once; beyond it requests get 429 (default 256)")
    engine = p.add_argument_group("engine")
    engine.add_argument("--kv-cache-memory-gb", type=float, default=None, help="KV pool size per model (default 1.0)")
    engine.add_argument("--num-kv-blocks", type=int, default=None, help="KV pool size in blocks (overrides the GB)")
    engine.add_argument("--max-num-seqs", type=int, default=None, help="most sequences decoded per step (default 128)")
    engine.add_argument("--max-model-len", type=int, default=None, help="context limit (default: the model's)")
    engine.add_argument("--num-threads", "--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=serve)


def parse_models(values: list[str] | None) -> dict[str, str]:
    models: dict[str, str] = {}
    for value in values or ["default"]:
        name, sep, source = value.partition("=")
        if not sep:
            name, source = value, value
        if not name or not source:
            raise InvalidRequestError(f"--model {value!r}: expected MODEL or NAME=MODEL")
        if name in models:
            raise InvalidRequestError(f"--model {value!r}: the name {name!r} is served twice")
        models[name] = source
    return models


def _engine_options(args: argparse.Namespace) -> dict[str, object]:
    names = ("kv_cache_memory_gb", "num_kv_blocks", "max_num_seqs", "max_model_len", "num_threads")
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def _load_architectures(paths: list[str], cache: str | None) -> dict[str, object]:
    if not paths:
        return {}
    from lamina.architecture import Architecture

    option: str | bool | None = False if cache and cache.lower() == "none" else cache
    archs: dict[str, object] = {}
    for path in paths:
        if not Path(path).is_file():
            raise InvalidRequestError(f"--arch {path!r}: no such file")
        arch = Architecture.from_file(path, cache=option)
        arch.check()  # its verifier files, before the server starts
        if arch.name in archs:
            raise InvalidRequestError(f"--arch {path!r}: architecture name {arch.name!r} is served twice")
        archs[arch.name] = arch
    return archs


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from lamina.backends.local import register_engine
    from lamina.engine.engine import AsyncEngine
    from lamina.server.app import create_app

    if args.max_queue < 1:
        raise InvalidRequestError(f"--max-queue {args.max_queue}: expected an integer >= 1")
    models = parse_models(args.model)
    archs = _load_architectures(args.arch, args.arch_cache)  # spec errors show before any model loads
    engines = {}
    for name, source in models.items():
        engines[name] = AsyncEngine(model=source, **_engine_options(args))
        for alias in {name, source}:
            register_engine(alias, engines[name])  # architectures naming this model reuse the loaded engine
    app = create_app(engines, archs, api_key=args.api_key, max_queue=args.max_queue)
    names = ", ".join([*engines, *(f"arch:{a}" for a in archs)])
    print(f"lamina serve: http://{args.host}:{args.port}/v1 serving {names}", file=sys.stderr, flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    finally:
        asyncio.run(_close(archs, engines))
    return 0


async def _close(archs: dict[str, object], engines: dict[str, object]) -> None:
    for arch in archs.values():
        await arch.aclose()  # type: ignore[attr-defined]
    for engine in engines.values():
        engine.shutdown()  # type: ignore[attr-defined]
