"""Lamina: inference-time architectures for language models, and the engine that makes them cheap."""
from __future__ import annotations

from lamina.errors import LaminaError

__version__ = "0.1.0"
__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput", "AsyncEngine", "LaminaError", "__version__"]


def __getattr__(name: str):
    if name in ("LLM", "AsyncEngine"):
        from lamina.engine import engine

        return getattr(engine, name)
    if name in ("SamplingParams",):
        from lamina.engine import sampling_params

        return getattr(sampling_params, name)
    if name in ("RequestOutput", "CompletionOutput"):
        from lamina.engine import outputs

        return getattr(outputs, name)
    raise AttributeError(f"module 'lamina' has no attribute {name!r}")
