"""SQLite persistence: every state change is written in one transaction before it is answered.

Orders and events are stored as JSON text; ``meta`` holds the clock offset, prices, tick
counter, seed, fault and fill configuration.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    id TEXT PRIMARY KEY,
    client_order_id TEXT NOT NULL UNIQUE,
    seq INTEGER NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    "offset" INTEGER PRIMARY KEY,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


class Store:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path)
        # WAL + NORMAL survives a killed process (not a power cut): what a restart test needs.
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        self._conn.close()

    def load_orders(self) -> list[dict[str, Any]]:
        rows = self._conn.execute("SELECT data FROM orders ORDER BY seq").fetchall()
        return [json.loads(r[0]) for r in rows]

    def load_meta(self) -> dict[str, Any]:
        rows = self._conn.execute("SELECT key, value FROM meta").fetchall()
        return {k: json.loads(v) for k, v in rows}

    def last_offset(self) -> int:
        row = self._conn.execute('SELECT COALESCE(MAX("offset"), 0) FROM events').fetchone()
        return int(row[0])

    def events_after(self, offset: int, limit: int) -> list[tuple[int, str]]:
        """(offset, stored text) of the events after ``offset``, in order."""
        rows = self._conn.execute(
            'SELECT "offset", data FROM events WHERE "offset" > ? ORDER BY "offset" LIMIT ?',
            (offset, limit),
        ).fetchall()
        return [(int(r[0]), r[1]) for r in rows]

    def commit(
        self,
        orders: list[tuple[str, str, int, str]],
        events: list[tuple[int, str]],
        meta: dict[str, Any],
    ) -> None:
        """Write orders (id, client_order_id, seq, json), events and meta atomically."""
        with self._conn:
            self._conn.executemany(
                "INSERT INTO orders (id, client_order_id, seq, data) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET data = excluded.data",
                orders,
            )
            self._conn.executemany('INSERT INTO events ("offset", data) VALUES (?, ?)', events)
            self._conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [(k, json.dumps(v)) for k, v in meta.items()],
            )
