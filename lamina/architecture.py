"""Architecture: a validated spec plus its backends and call cache; `await arch.run(messages)` answers a query."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from lamina.accounting import Usage
from lamina.backends import Backend, get_backend
from lamina.cache import DEFAULT_CACHE_PATH, CallCache
from lamina.calls import ModelHandle
from lamina.errors import InvalidRequestError
from lamina.runner import ArchResult, LayerResult, Runner, write_trace
from lamina.spec import ArchSpec, load_spec, parse_spec

__all__ = ["Architecture", "ArchResult", "ArchSpec", "LayerResult", "Usage", "write_trace"]

_SPEC_ALIAS_KEYS = ("backend", "base_url", "api_key_env", "max_concurrency", "engine", "timeout_s", "max_retries",
                    "supports_n")


class Architecture:
    """`cache`: a SQLite path, None for the spec's (or ~/.cache/lamina/calls.sqlite), False for no cache.
    `backends`: alias -> a Backend object to use instead of the one the alias declares (tests, embedding);
    the alias's sampling `params` still apply. An alias the spec does not declare is an InvalidRequestError."""

    def __init__(self, spec: ArchSpec, *, cache: str | Path | bool | None = None,
                 backends: dict[str, Backend] | None = None) -> None:
        given = dict(backends or {})
        unknown = sorted(set(given) - set(spec.models))
        if unknown:
            raise InvalidRequestError(f"backends: unknown model alias(es) {unknown}; "
                                      f"the spec declares {list(spec.models)}")
        self.spec = spec
        self.name = spec.name
        self.cache = _open_cache(spec, cache)
        self.models: dict[str, ModelHandle] = {}
        for alias, m in spec.models.items():
            backend = given.get(alias) or get_backend(m.backend, m.model, **m.backend_options())
            self.models[alias] = ModelHandle(alias, backend, m.params.values())
        self.runner = Runner(spec, self.models, self.cache)
        self.usage = Usage()

    def check(self) -> None:
        """What can be checked before anything is spent: the spec's verifier files (readable, trained on one of
        its local models). VerifierError naming the component and file."""
        from lamina.techniques.reward import check_spec_verifiers

        check_spec_verifiers(self.spec)

    @classmethod
    def from_file(cls, path: str | Path, **options: Any) -> "Architecture":
        return cls(load_spec(path), **options)

    @classmethod
    def from_spec(cls, data: dict[str, Any], source: str = "<dict>", **options: Any) -> "Architecture":
        return cls(parse_spec(data, source), **options)

    @classmethod
    def single_model(cls, model: str, cache: str | Path | bool | None = False, **sampling_defaults: Any) -> "Architecture":
        alias = {k: sampling_defaults.pop(k) for k in _SPEC_ALIAS_KEYS if k in sampling_defaults}
        data = {"name": f"single:{model}", "models": {"m": {"model": model, **alias, "params": sampling_defaults}},
                "layers": [[{"type": "generate", "model": "m"}]]}
        return cls.from_spec(data, f"single_model({model!r})", cache=cache)

    async def run(self, messages: list[dict[str, str]] | str, *, tests: list[str] | None = None,
                  seed: int | None = None) -> ArchResult:
        result = await self.runner.run(messages, tests, seed)
        self.usage = self.usage + result.usage
        return result

    async def aclose(self) -> None:
        for handle in self.models.values():
            await handle.backend.aclose()
        if self.cache is not None:
            self.cache.close()
            self.cache = None

    def __repr__(self) -> str:
        return f"Architecture({self.name!r}, layers={len(self.spec.layers)})"


def _open_cache(spec: ArchSpec, cache: str | Path | bool | None) -> CallCache | None:
    if cache is False:
        return None
    if cache is None or cache is True:
        return CallCache(spec.cache or DEFAULT_CACHE_PATH)
    return CallCache(cache)
