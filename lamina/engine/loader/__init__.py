"""Model loading: embedded names, GGUF files and Hugging Face safetensors folders."""
from __future__ import annotations

from lamina.engine.loader.registry import load_model, resolve_model_path
from lamina.engine.loader.types import LoadedModel

__all__ = ["load_model", "resolve_model_path", "LoadedModel"]
