"""Run an architecture spec once, synchronously, closing its backends afterwards (a helper for tests)."""
from __future__ import annotations

import asyncio
from pathlib import Path

from lamina.architecture import Architecture
from lamina.runner import ArchResult


def run_spec(spec: dict, messages, *, tests: list[str] | None = None, cache: str | Path | bool = False,
             backends: dict | None = None) -> ArchResult:
    """`backends`: alias -> Backend object (e.g. a tests.scripted.ScriptedBackend) replacing what the alias names."""
    arch = Architecture.from_spec(spec, cache=cache, backends=backends)

    async def go() -> ArchResult:
        try:
            return await arch.run(messages, tests=tests)
        finally:
            await arch.aclose()

    return asyncio.run(go())
