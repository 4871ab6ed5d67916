"""How a task's answers are scored, as validated data; `lamina.eval.scorers.Scorer` does the scoring."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from lamina.answers import EXTRACTORS, RegexExtract
from lamina.errors import SpecError

SCORERS = ("exact", "normalized", "numeric", "math", "choice", "contains", "code", "judge")
_DEFAULT_EXTRACT = {"code": "code", "choice": "choice", "contains": "text"}
_REGEX_FIELDS = ("pattern", "group", "select")


@dataclass(slots=True)
class ScorerSpec:
    """Extract with `extract` (one of `EXTRACTORS`), then compare with `kind` (one of `SCORERS`); `options` carry
    kind-specific settings (e.g. the judge's `baseline` and `model`, the code scorer's `timeout_s`, the regex
    extractor's `pattern`, `group` and `select`)."""
    kind: str
    extract: str = "auto"
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, config: str | dict[str, Any], default_extract: str = "auto", source: str = "<task>") -> "ScorerSpec":
        """From a task's `scorer:` field: a type name or `{type, extract?, ...options}`.
        Raises SpecError naming `source`, the field and the value for an unknown type or extractor and for a
        missing or invalid regex `pattern`, `group` or `select`."""
        options = {"type": config} if isinstance(config, str) else dict(config)
        kind = options.pop("type", None)
        if kind not in SCORERS:
            raise SpecError(f"{source}: scorer.type must be one of {', '.join(SCORERS)}, got {kind!r}")
        extract = options.pop("extract", _DEFAULT_EXTRACT.get(kind, default_extract))
        if extract not in EXTRACTORS:
            raise SpecError(f"{source}: scorer.extract must be one of {', '.join(EXTRACTORS)}, got {extract!r}")
        spec = cls(kind, extract, options)
        if extract == "regex":
            spec.regex(source)
        elif given := [name for name in _REGEX_FIELDS if name in options]:
            raise SpecError(f"{source}: scorer.{given[0]} is only used with `extract: regex`, got extract {extract!r}")
        return spec

    def regex(self, source: str = "<task>") -> RegexExtract | None:
        """The regex extractor from `options` (None unless `extract` is `regex`). Raises SpecError naming `source`
        and the field for a missing or invalid `pattern`, a `group` the pattern lacks, or a `select` not first/last."""
        if self.extract != "regex":
            return None
        try:
            return RegexExtract.build(self.options.get("pattern"), self.options.get("group"),
                                      self.options.get("select", "last"))
        except ValueError as exc:
            raise SpecError(f"{source}: scorer.{exc}") from None

    def identity(self) -> dict[str, Any]:
        """What a run's scores depend on (type, extractor and options, e.g. the judge's baseline and model), as JSON:
        part of the run identity, so a resumed store never mixes scores from different scorers."""
        return json.loads(json.dumps({"type": self.kind, "extract": self.extract, **self.options}, sort_keys=True,
                                     default=str))
