"""Reading a YAML or JSON config file (architecture specs, task specs, search spaces, Archon configs) with errors that
name the file and, for syntax errors, the line and column. Imports nothing of Lamina above lamina.errors, so any layer
may read its config files with it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from lamina.errors import SpecError


def read_spec_file(path: str | Path, what: str = "architecture spec") -> Any:
    """A YAML (or, by suffix, JSON) file's data; errors name the file and, for syntax errors, line and column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise SpecError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise SpecError(f"{path}: invalid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
