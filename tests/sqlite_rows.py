"""Reading a SQLite file that another process may still be creating: its rows, or [] while it (or its table) is
not there yet (used by the resume tests of the eval harness and the architecture search)."""
from __future__ import annotations

import sqlite3
from pathlib import Path


def rows(path: Path, query: str) -> list[tuple]:
    if not path.exists():
        return []
    db = sqlite3.connect(path)
    try:
        return db.execute(query).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()
