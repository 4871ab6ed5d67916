"""SQLite call cache: one row per sample, keyed by (backend, model, messages, params, seed, sample index)."""
from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from lamina.backends.base import Completion
from lamina.engine.sampling_params import SamplingParams
from lamina.errors import LaminaError

DEFAULT_CACHE_PATH = Path("~/.cache/lamina/calls.sqlite")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
  key TEXT PRIMARY KEY,
  backend TEXT NOT NULL,
  completion TEXT NOT NULL,
  prompt_tokens INTEGER NOT NULL,
  created REAL DEFAULT (julianday('now'))
)
"""


def call_key(backend: str, messages: list[dict] | None, prompt: str | None, params: SamplingParams, index: int,
             mode: str = "sample") -> str:
    fields = params.to_dict()
    fields.pop("n")
    blob = json.dumps({"backend": backend, "messages": messages, "prompt": prompt, "params": fields,
                       "seed": params.seed, "index": index, "mode": mode}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class CallCache:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise LaminaError(f"call cache {self.path}: cannot open ({exc})") from exc
        self._lock = threading.Lock()

    def get_many(self, keys: list[str]) -> list[tuple[Completion, int]] | None:
        """All of them, or None when any is missing."""
        with self._lock:
            marks = ",".join("?" * len(keys))
            rows = dict((k, (c, p)) for k, c, p in self._db.execute(
                f"SELECT key, completion, prompt_tokens FROM calls WHERE key IN ({marks})", keys))
        if len(rows) != len(set(keys)):
            return None
        return [(Completion.from_dict(json.loads(rows[k][0])), rows[k][1]) for k in keys]

    def put_many(self, backend: str, items: list[tuple[str, Completion]], prompt_tokens: int) -> None:
        rows = [(k, backend, json.dumps(c.to_dict(), ensure_ascii=False), prompt_tokens) for k, c in items]
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO calls (key, backend, completion, prompt_tokens) "
                                 "VALUES (?, ?, ?, ?)", rows)

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
