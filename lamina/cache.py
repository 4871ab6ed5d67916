"""SQLite call cache: one row per sample, keyed by (backend, model, messages, params, seed, sample index).
Each row also keeps what the call cost (its prompt tokens, the sample's share of the completion tokens), so a
replay reports the cost of the call it replays."""
from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path

from lamina.backends.base import Completion, Completions
from lamina.engine.sampling_params import SamplingParams
from lamina.errors import LaminaError

DEFAULT_CACHE_PATH = Path("~/.cache/lamina/calls.sqlite")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
  key TEXT PRIMARY KEY,
  backend TEXT NOT NULL,
  completion TEXT NOT NULL,
  prompt_tokens INTEGER NOT NULL,
  completion_tokens INTEGER,
  requests INTEGER,
  created REAL DEFAULT (julianday('now'))
)
"""


def call_key(backend: str, messages: list[dict] | None, prompt: str | None, params: SamplingParams, index: int,
             mode: str = "sample") -> str:
    """The cache key of sample `index` of a call. A greedy call's output does not depend on its seed, so its key
    leaves the seed out: deterministic calls (judges at temperature 0) replay whatever seed a run draws, while
    sampled calls replay only under the same seed."""
    fields = params.to_dict()
    fields.pop("n")
    seed = fields.pop("seed")
    blob = json.dumps({"backend": backend, "messages": messages, "prompt": prompt, "params": fields,
                       "seed": None if params.greedy else seed, "index": index, "mode": mode}, sort_keys=True,
                      ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class CallCache:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(calls)")}
            if "completion_tokens" not in columns:  # a cache written before rows kept their completion cost
                self._db.execute("ALTER TABLE calls ADD COLUMN completion_tokens INTEGER")
            if "requests" not in columns:  # ... or the requests their call took
                self._db.execute("ALTER TABLE calls ADD COLUMN requests INTEGER")
        except (OSError, sqlite3.Error) as exc:
            raise LaminaError(f"call cache {self.path}: cannot open ({exc})") from exc
        self._lock = threading.Lock()

    def get_many(self, keys: list[str]) -> Completions | None:
        """The samples under `keys`, in order, with what their call cost (prompt_tokens, completion_tokens, the
        requests it took; no seconds, no prefix-cache hits: nothing ran); None when any is missing."""
        with self._lock:
            marks = ",".join("?" * len(keys))
            rows = {k: (c, p, t, r) for k, c, p, t, r in self._db.execute(
                f"SELECT key, completion, prompt_tokens, completion_tokens, requests FROM calls WHERE key IN ({marks})",
                keys)}
        if len(rows) != len(set(keys)):
            return None
        items = [Completion.from_dict(json.loads(rows[k][0])) for k in keys]
        spent = sum(item.num_tokens if rows[k][2] is None else rows[k][2] for k, item in zip(keys, items))
        return Completions(items, rows[keys[0]][1], 0.0, spent, requests=rows[keys[0]][3] or 1)

    def put_many(self, backend: str, keys: list[str], out: Completions) -> None:
        """One row per sample of `out`; the rows' completion-token shares add up to the call's completion_tokens."""
        shares = [c.num_tokens for c in out]
        shares[0] += out.completion_tokens - sum(shares)
        rows = [(k, backend, json.dumps(c.to_dict(), ensure_ascii=False), out.prompt_tokens, share, out.requests)
                for k, c, share in zip(keys, out, shares)]
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO calls (key, backend, completion, prompt_tokens, "
                                 "completion_tokens, requests) VALUES (?, ?, ?, ?, ?, ?)", rows)

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
