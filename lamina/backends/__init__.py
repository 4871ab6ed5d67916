"""Model backends: `get_backend("local" | "openai", model, **opts)`."""
from __future__ import annotations

from typing import Any

from lamina.backends.base import Backend, Completion, Completions, TokenLP
from lamina.errors import SpecError

__all__ = ["Backend", "Completion", "Completions", "TokenLP", "get_backend", "BACKEND_KINDS"]

BACKEND_KINDS = ("local", "openai")


def get_backend(kind: str, model: str, **opts: Any) -> Backend:
    if kind == "local":
        from lamina.backends.local import LocalBackend

        return LocalBackend(model, **opts)
    if kind == "openai":
        from lamina.backends.openai import OpenAIBackend

        return OpenAIBackend(model, **opts)
    raise SpecError(f"unknown backend {kind!r}; known: {', '.join(BACKEND_KINDS)}")
