"""One SQLite file per eval run: its config, and one row per finished example committed as soon as it finishes."""
from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lamina.errors import SpecError

SCHEMA = """
CREATE TABLE IF NOT EXISTS config (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (
  example_id TEXT PRIMARY KEY, idx INTEGER NOT NULL, prediction TEXT NOT NULL, extracted TEXT,
  reference TEXT NOT NULL, score REAL NOT NULL, detail TEXT NOT NULL DEFAULT '',
  sample_scores TEXT NOT NULL DEFAULT '[]', usage TEXT NOT NULL DEFAULT '{}', trace TEXT NOT NULL DEFAULT '[]',
  error TEXT, seconds REAL NOT NULL DEFAULT 0, attempt INTEGER NOT NULL DEFAULT 1, finished_at REAL NOT NULL
);
"""
# What a resumed run must match; "scorer" (type + options, e.g. a judge's baseline and model) keeps scores unmixed.
# A key the stored config lacks (a store from before it was recorded) is not compared.
IDENTITY_KEYS = ("task", "task_hash", "split", "arch_hash", "seed", "scorer")


@dataclass(slots=True)
class ResultRow:
    example_id: str
    idx: int
    prediction: str
    extracted: str | None
    reference: str
    score: float
    detail: str = ""
    sample_scores: list[float] = field(default_factory=list)
    usage: dict[str, Any] = field(default_factory=dict)
    trace: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    attempt: int = 1
    finished_at: float = 0.0


class RunStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
        except (OSError, sqlite3.DatabaseError) as exc:
            raise SpecError(f"{self.path}: cannot open run store ({exc})") from None

    @classmethod
    def open_existing(cls, path: str | Path) -> "RunStore":
        if not Path(path).is_file():
            raise SpecError(f"{path}: no such run file")
        store = cls(path)
        if not store.config():
            raise SpecError(f"{path}: not a Lamina eval run (no config)")
        return store

    def config(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.db.execute("SELECT key, value FROM config")}

    def begin(self, config: dict[str, Any]) -> int:
        """Record (or check) the run config; returns this attempt's number (1 for a fresh run)."""
        old = self.config()
        clash = [k for k in IDENTITY_KEYS if old and k in old and old.get(k) != config.get(k)]
        if clash:
            diffs = ", ".join(f"{k}: stored {old.get(k)!r} vs now {config.get(k)!r}" for k in clash)
            raise SpecError(f"{self.path}: holds a different run ({diffs}); choose another --out or --name")
        attempt = int(old.get("attempts", 0)) + 1
        with self.db:
            for key, value in {**config, "attempts": attempt, "updated_at": time.time()}.items():
                self.db.execute("INSERT OR REPLACE INTO config VALUES (?, ?)", (key, json.dumps(value)))
        return attempt

    def finished_ids(self) -> set[str]:
        return {row[0] for row in self.db.execute("SELECT example_id FROM results")}

    def add(self, row: ResultRow) -> None:
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO results VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (row.example_id, row.idx, row.prediction, row.extracted, row.reference, row.score, row.detail,
                 json.dumps(row.sample_scores), json.dumps(row.usage), json.dumps(row.trace, default=str),
                 row.error, row.seconds, row.attempt, row.finished_at or time.time()))

    def rows(self, with_trace: bool = False) -> list[ResultRow]:
        trace = "trace" if with_trace else "'[]'"
        query = (f"SELECT example_id, idx, prediction, extracted, reference, score, detail, sample_scores, usage, "
                 f"{trace}, error, seconds, attempt, finished_at FROM results ORDER BY idx")
        out = []
        for r in self.db.execute(query):
            out.append(ResultRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7]), json.loads(r[8]),
                                 json.loads(r[9]), r[10], r[11], r[12], r[13]))
        return out

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
