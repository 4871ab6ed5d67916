"""Convert an Archon config (its `layers` form or the older flat `models` form) into a Lamina spec dict."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lamina.errors import SpecError

LOCAL_TYPES = {"vllm", "huggingface", "hf", "local"}
HOSTED = {  # model_type (lowercased) -> (base_url, api key variable)
    "openai_api": ("https://api.openai.com/v1", "OPENAI_API_KEY"),
    "together_api": ("https://api.together.xyz/v1", "TOGETHER_API_KEY"),
    "anthropic_api": ("https://api.anthropic.com/v1", "ANTHROPIC_API_KEY"),
    "groq_api": ("https://api.groq.com/openai/v1", "GROQ_API_KEY"),
    "google_api": ("https://generativelanguage.googleapis.com/v1beta/openai", "GOOGLE_API_KEY"),
    "gemini_api": ("https://generativelanguage.googleapis.com/v1beta/openai", "GOOGLE_API_KEY"),
    "deepseek_api": ("https://api.deepseek.com/v1", "DEEPSEEK_API_KEY"),
    "mistral_api": ("https://api.mistral.ai/v1", "MISTRAL_API_KEY"),
    "openrouter_api": ("https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"),
    "tgi": ("http://127.0.0.1:8080/v1", None),
}
TYPE_MAP = {"generator": "generate", "model": "generate", "ranker": "rank", "fuser": "fuse", "critic": "critique",
            "verifier": "verify", "unit_test_evaluator": "unit_test"}
SAMPLING_KEYS = {"temperature": "temperature", "max_tokens": "max_tokens", "max_context_length": "max_tokens",
                 "top_p": "top_p"}
IDENTITY_KEYS = {"type", "model", "model_type", "name", "checkpoint", "generator_type"}


@dataclass(slots=True)
class Conversion:
    spec: dict[str, Any]
    notes: list[str] = field(default_factory=list)


class _Converter:
    def __init__(self, source: str) -> None:
        self.source = source
        self.models: dict[str, dict[str, Any]] = {}
        self.notes: list[str] = []
        self.num_tests = 5

    def alias(self, comp: dict[str, Any], where: str) -> str:
        model = comp.get("model") or comp.get("checkpoint")
        if not isinstance(model, str) or not model:
            raise SpecError(f"{self.source}: {where}.model: expected a model name")
        kind = str(comp.get("model_type", "vLLM"))
        entry: dict[str, Any]
        if kind.lower() in LOCAL_TYPES:
            entry = {"backend": "local", "model": model}
        elif kind.lower() in HOSTED:
            base_url, key = HOSTED[kind.lower()]
            entry = {"backend": "openai", "model": model, "base_url": base_url}
            if key:
                entry["api_key_env"] = key
        else:
            known = sorted(["vLLM", "HuggingFace", *(k for k in HOSTED)])
            raise SpecError(f"{self.source}: {where}.model_type: unknown Archon model type {kind!r}; known: {known}")
        for name, existing in self.models.items():
            if existing == entry:
                return name
        base = re.sub(r"[^a-z0-9]+", "-", model.split("/")[-1].lower()).strip("-") or "model"
        name, k = base, 2
        while name in self.models:
            name, k = f"{base}-{k}", k + 1
        self.models[name] = entry
        return name

    def component(self, comp: Any, where: str) -> dict[str, Any] | None:
        if not isinstance(comp, dict):
            raise SpecError(f"{self.source}: {where}: expected a component object, got {type(comp).__name__}")
        archon_type = str(comp.get("type", "generator")).lower()
        if archon_type == "unit_test_generator":
            self.num_tests = int(comp.get("unit_test_cap", comp.get("samples", self.num_tests)) or self.num_tests)
            self.notes.append(f"{where}: unit_test_generator folded into the following unit_test component")
            return None
        if archon_type not in TYPE_MAP:
            raise SpecError(f"{self.source}: {where}.type: unknown Archon component {archon_type!r}; "
                            f"known: {sorted([*TYPE_MAP, 'unit_test_generator'])}")
        kind = TYPE_MAP[archon_type]
        out: dict[str, Any] = {"type": kind, "model": self.alias(comp, where)}
        for key, target in SAMPLING_KEYS.items():
            if comp.get(key) is not None and target not in out:
                out[target] = comp[key]
        self.options(kind, comp, out, where)
        return out

    def options(self, kind: str, comp: dict[str, Any], out: dict[str, Any], where: str) -> None:
        used = set(IDENTITY_KEYS) | set(SAMPLING_KEYS)
        if kind in ("generate", "fuse") and comp.get("samples") is not None:
            out["samples"] = int(comp["samples"])
        if kind == "rank" and comp.get("top_k") is not None:
            out["top_k"] = int(comp["top_k"])
        if kind == "fuse" and comp.get("first_k", comp.get("top_k")) is not None:
            out["top_k"] = int(comp.get("first_k", comp.get("top_k")))
        if kind in ("rank", "fuse") and comp.get("use_critiques") is not None:
            out["use_critiques"] = bool(comp["use_critiques"])
        if kind == "unit_test":
            out["num_tests"] = self.num_tests
        used |= {"samples", "top_k", "first_k", "use_critiques", "unit_test_cap"}
        ignored = sorted(set(comp) - used)
        if ignored:
            self.notes.append(f"{where}: ignored Archon key(s) {ignored}")

    def layers(self, raw_layers: Any) -> list[list[dict[str, Any]]]:
        if not isinstance(raw_layers, list) or not raw_layers:
            raise SpecError(f"{self.source}: layers: expected a non-empty list of layers")
        layers = []
        for i, layer in enumerate(raw_layers):
            comps = layer.get("models") if isinstance(layer, dict) else layer
            if not isinstance(comps, list):
                raise SpecError(f"{self.source}: layers[{i}]: expected a list of components (or {{models: [...]}})")
            converted = [self.component(c, f"layers[{i}][{j}]") for j, c in enumerate(comps)]
            converted = [c for c in converted if c is not None]
            if converted:
                layers.append(converted)
        return layers

    def flat(self, config: dict[str, Any]) -> list[list[dict[str, Any]]]:
        """The older form: `models` (generators), then optional ranking (`top_k`) and `fuser`/`aggregator`."""
        models = config["models"]
        if not isinstance(models, list) or not models:
            raise SpecError(f"{self.source}: models: expected a non-empty list of generator models")
        layers = [[self.component({**m, "type": "generator"}, f"models[{j}]") for j, m in enumerate(models)]]
        top_k = config.get("top_k", config.get("top_k_generations"))
        ranker = config.get("ranker")
        if isinstance(ranker, dict) or top_k is not None:
            rank = dict(ranker or {"model": models[0].get("model"), "model_type": models[0].get("model_type")})
            rank = {**rank, "type": "ranker", **({"top_k": top_k} if top_k is not None else {})}
            layers.append([self.component(rank, "ranker")])
        fuser = config.get("fuser") or config.get("aggregator")
        if isinstance(fuser, dict):
            layers.append([self.component({**fuser, "type": "fuser"}, "fuser")])
        if int(config.get("rounds", 1) or 1) > 1:
            self.notes.append("rounds > 1: only one round converted")
        return layers  # type: ignore[return-value]


def convert_archon(config: Any, source: str = "<archon>") -> Conversion:
    if not isinstance(config, dict):
        raise SpecError(f"{source}: an Archon config must be a JSON object")
    conv = _Converter(source)
    if "layers" in config:
        layers = conv.layers(config["layers"])
    elif "models" in config:
        layers = conv.flat(config)
    else:
        raise SpecError(f"{source}: expected Archon 'layers' (or the older 'models' list)")
    name = str(config.get("name") or Path(source).stem or "archon")
    spec = {"name": name, "description": f"Imported from the Archon config {Path(source).name}",
            "models": conv.models, "layers": layers}
    return Conversion(spec, conv.notes)


def import_archon_file(path: str | Path) -> Conversion:
    from lamina.config_file import read_spec_file
    from lamina.spec import parse_spec

    path = Path(path)
    config = read_spec_file(path, "Archon config")
    conversion = convert_archon(config, str(path))

    parse_spec(conversion.spec, f"{path} (converted)")
    return conversion
