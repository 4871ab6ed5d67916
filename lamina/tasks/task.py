"""A task: examples from a source + prompt template + answer extractor + scorer spec, declared in YAML."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lamina.answers import EXTRACTORS
from lamina.errors import SpecError
from lamina.config_file import read_spec_file
from lamina.tasks import datasets, generated
from lamina.tasks.scorer_spec import ScorerSpec


@dataclass(slots=True)
class Example:
    id: str
    inputs: dict[str, Any]
    reference: str = ""
    tests: list[str] = field(default_factory=list)
    public_tests: list[str] = field(default_factory=list)
    split: str = "test"
    references: list[str] = field(default_factory=list)  # every acceptable answer when the record gives a list


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceSpec(_Strict):
    type: Literal["jsonl", "csv", "hf", "package", "generated"]
    path: str | None = None
    config: str | None = None
    name: str | None = None
    generator: str | None = None
    difficulty: int = Field(1, ge=1)
    seed: int = 0
    sizes: dict[str, int] | None = None


class FieldMap(_Strict):
    id: str = "id"
    reference: str = "reference"
    tests: str = "tests"
    public_tests: str = "public_tests"
    messages: str = "messages"


class TaskSpec(_Strict):
    name: str = Field(min_length=1)
    description: str = ""
    source: SourceSpec
    fields: FieldMap = Field(default_factory=FieldMap)
    reference_pattern: str | None = None
    splits: dict[str, float] | None = None
    default_split: str = "test"
    system: str | None = None
    prompt: str = "{question}"
    extract: str = "auto"
    scorer: str | dict[str, Any] = "normalized"
    max_tokens: int = Field(256, ge=1)


class Task:
    def __init__(self, spec: TaskSpec, source: str = "<dict>", base_dir: Path | None = None) -> None:
        self.spec, self.source, self.base_dir = spec, source, base_dir or Path.cwd()
        if spec.extract not in EXTRACTORS:
            raise SpecError(f"{source}: extract must be one of {', '.join(EXTRACTORS)}, got {spec.extract!r}")
        self.scorer: ScorerSpec = ScorerSpec.parse(spec.scorer, spec.extract, source)

    @classmethod
    def from_spec(cls, data: Any, source: str = "<dict>", base_dir: Path | None = None) -> "Task":
        if not isinstance(data, dict):
            raise SpecError(f"{source}: a task spec must be a mapping, got {type(data).__name__}")
        try:
            spec = TaskSpec.model_validate(data)
        except ValidationError as exc:
            lines = [f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors()]
            raise SpecError(f"{source}: invalid task spec:\n  " + "\n  ".join(lines)) from None
        return cls(spec, source, base_dir)

    @classmethod
    def from_file(cls, path: str | Path) -> "Task":
        path = Path(path)
        return cls.from_spec(read_spec_file(path, "task spec"), str(path), path.parent)

    @property
    def name(self) -> str:
        return self.spec.name

    @cached_property
    def all_examples(self) -> list[Example]:
        records = self._records()
        return [self._example(i, r) for i, r in enumerate(records)]

    def splits(self) -> list[str]:
        return sorted({e.split for e in self.all_examples})

    def examples(self, split: str | None = None, limit: int | None = None) -> list[Example]:
        split = split or self.spec.default_split
        chosen = self.all_examples if split == "all" else [e for e in self.all_examples if e.split == split]
        if not chosen:
            raise SpecError(f"task {self.name!r} ({self.source}): no examples in split {split!r}; "
                            f"available: {', '.join(self.splits() + ['all'])}")
        return chosen[:limit] if limit else chosen

    def messages(self, example: Example) -> list[dict[str, str]]:
        given = example.inputs.get(self.spec.fields.messages)
        if isinstance(given, list):
            return given
        try:
            content = self.spec.prompt.format_map(example.inputs)
        except (KeyError, IndexError, ValueError) as exc:
            raise SpecError(f"{self.source}: prompt template needs field {exc} which example {example.id!r} "
                            f"lacks (fields: {', '.join(example.inputs)})") from None
        system = [{"role": "system", "content": self.spec.system}] if self.spec.system else []
        return system + [{"role": "user", "content": content}]

    def fingerprint(self) -> str:
        return hashlib.sha256(self.spec.model_dump_json().encode()).hexdigest()[:16]

    def _records(self) -> list[dict[str, Any]]:
        src = self.spec.source
        if src.type == "generated":
            if not src.generator:
                raise SpecError(f"{self.source}: source.generator is required for a generated task")
            return generated.generate(src.generator, src.difficulty, src.seed, src.sizes)
        if src.type == "package":
            if not src.name:
                raise SpecError(f"{self.source}: source.name is required; one of {', '.join(datasets.PACKAGED)}")
            return datasets.load_packaged(src.name)
        if not src.path:
            raise SpecError(f"{self.source}: source.path is required for a {src.type} source")
        path = (self.base_dir / src.path).resolve()
        if not path.exists():
            raise SpecError(f"{self.source}: source.path {src.path!r} not found (looked at {path})")
        if src.type == "hf":
            return datasets.load_hf_folder(path, src.config)
        return datasets.load_csv(path) if src.type == "csv" else datasets.load_file(path)

    def _example(self, index: int, record: dict[str, Any]) -> Example:
        f = self.spec.fields
        given = record.get(f.reference, "")
        references = [self._reference(str(r)) for r in given] if isinstance(given, list) else []
        reference = references[0] if references else self._reference("" if isinstance(given, list) else str(given))
        split = str(record.get("split") or self._split_for(str(record.get(f.id, index))))
        return Example(str(record.get(f.id, index)), record, reference, _tests(record.get(f.tests)),
                       _tests(record.get(f.public_tests)), split, references)

    def _reference(self, text: str) -> str:
        if not self.spec.reference_pattern:
            return text
        found = re.search(self.spec.reference_pattern, text, re.DOTALL)
        return (found.group(1) if found and found.groups() else text).strip()

    def _split_for(self, key: str) -> str:
        if not self.spec.splits:
            return self.spec.default_split
        total = sum(self.spec.splits.values())
        point = int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 16 ** 8 * total
        for split, share in self.spec.splits.items():
            if point < share:
                return split
            point -= share
        return list(self.spec.splits)[-1]


def _tests(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return [value]
        return [str(t) for t in parsed] if isinstance(parsed, list) else [value]
    return [str(t) for t in value]


def builtin_names() -> list[str]:
    folder = resources.files("lamina.tasks") / "builtin"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_task(name_or_path: str) -> Task:
    """A builtin task name (see `builtin_names()`) or a path to a task YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return Task.from_file(path)
    builtin = resources.files("lamina.tasks") / "builtin" / f"{name_or_path}.yaml"
    if not builtin.is_file():
        raise SpecError(f"unknown task {name_or_path!r}: not a file, and not a builtin task "
                        f"({', '.join(builtin_names())})")
    return Task.from_file(Path(str(builtin)))
