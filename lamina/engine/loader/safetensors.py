"""Load a Hugging Face folder: config.json, (sharded) *.safetensors, tokenizer.json and tokenizer_config.json."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lamina.engine.config import ModelConfig
from lamina.engine.loader.types import LoadedModel
from lamina.engine.tokenizer import Tokenizer
from lamina.errors import ModelLoadError

INDEX = "model.safetensors.index.json"
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def load_safetensors_folder(folder: Path, dtype: torch.dtype = torch.float32) -> LoadedModel:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{folder}: not a model folder (no config.json; expected config.json + *.safetensors, or a .gguf file)")
    raw = read_json(config_file)
    try:
        config = ModelConfig.from_hf_dict(raw, source=str(config_file))
    except KeyError as exc:
        raise ModelLoadError(f"{config_file}: missing required field {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{config_file}: invalid value: {exc}") from None
    generation = read_json(folder / "generation_config.json") if (folder / "generation_config.json").is_file() else {}
    config.eos_token_ids = list(dict.fromkeys(config.eos_token_ids + _ids(generation.get("eos_token_id"))))
    weights = read_weights(folder, dtype)
    if config.tie_word_embeddings:
        weights.pop("lm_head.weight", None)
    return LoadedModel(config=config, weights=weights, tokenizer=tokenizer_from_folder(folder, config), source=folder)


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: cannot read JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def shard_files(folder: Path) -> list[Path]:
    index = folder / INDEX
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelLoadError(f"{index}: missing or empty 'weight_map'")
        files = [folder / name for name in dict.fromkeys(weight_map.values())]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ModelLoadError(f"{index}: lists shard(s) that do not exist: {', '.join(missing)}")
        return files
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{folder}: no *.safetensors weights (and no {INDEX})")
    return files


def read_weights(folder: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError, safe_open

    weights: dict[str, torch.Tensor] = {}
    for file in shard_files(folder):
        try:
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():
                    if not name.endswith(_IGNORED_SUFFIXES):
                        weights[name] = f.get_tensor(name).to(dtype)
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise ModelLoadError(f"{file}: cannot read safetensors: {exc}") from None
    return weights


def tokenizer_from_folder(folder: Path, config: ModelConfig) -> Tokenizer:
    from tokenizers import Tokenizer as Backend

    file = folder / "tokenizer.json"
    if not file.is_file():
        raise ModelLoadError(f"{folder}: no tokenizer.json (only fast tokenizers are supported)")
    try:
        backend = Backend.from_file(str(file))
    except Exception as exc:  # tokenizers raises a bare Exception on malformed files
        raise ModelLoadError(f"{file}: cannot parse tokenizer: {exc}") from None
    settings = read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}

    def special(name: str, token_id: int | None) -> str | None:
        value = settings.get(name)
        value = value.get("content") if isinstance(value, dict) else value
        return value if isinstance(value, str) else (backend.id_to_token(token_id) if token_id is not None else None)

    return Tokenizer(backend, chat_template=chat_template(folder, settings), bos_token=special("bos_token", config.bos_token_id),
                     eos_token=special("eos_token", (config.eos_token_ids or [None])[0]), extra_eos_ids=config.eos_token_ids,
                     add_bos_token=bool(settings.get("add_bos_token", False)), source=str(folder))


def chat_template(folder: Path, settings: dict[str, Any]) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = settings.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]
