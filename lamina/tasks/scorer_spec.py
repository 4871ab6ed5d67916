"""How a task's answers are scored, as validated data; `lamina.eval.scorers.Scorer` does the scoring."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from lamina.answers import EXTRACTORS
from lamina.errors import SpecError

SCORERS = ("exact", "normalized", "numeric", "math", "choice", "code", "judge")
_DEFAULT_EXTRACT = {"code": "code", "choice": "choice"}


@dataclass(slots=True)
class ScorerSpec:
    """Extract with `extract` (one of `EXTRACTORS`), then compare with `kind` (one of `SCORERS`); `options` carry
    kind-specific settings (e.g. the judge's `baseline` and `model`, the code scorer's `timeout_s`)."""
    kind: str
    extract: str = "auto"
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, config: str | dict[str, Any], default_extract: str = "auto", source: str = "<task>") -> "ScorerSpec":
        """From a task's `scorer:` field: a type name or `{type, extract?, ...options}`.
        Raises SpecError naming `source` for an unknown type or extractor."""
        options = {"type": config} if isinstance(config, str) else dict(config)
        kind = options.pop("type", None)
        if kind not in SCORERS:
            raise SpecError(f"{source}: scorer.type must be one of {', '.join(SCORERS)}, got {kind!r}")
        extract = options.pop("extract", _DEFAULT_EXTRACT.get(kind, default_extract))
        if extract not in EXTRACTORS:
            raise SpecError(f"{source}: scorer.extract must be one of {', '.join(EXTRACTORS)}, got {extract!r}")
        return cls(kind, extract, options)

    def identity(self) -> dict[str, Any]:
        """What a run's scores depend on (type, extractor and options, e.g. the judge's baseline and model), as JSON:
        part of the run identity, so a resumed store never mixes scores from different scorers."""
        return json.loads(json.dumps({"type": self.kind, "extract": self.extract, **self.options}, sort_keys=True,
                                     default=str))
