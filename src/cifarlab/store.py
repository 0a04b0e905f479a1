"""The study store: one SQLite file per study folder recording every finished run.

A run is recorded in one transaction after its run folder is complete, so killing a study
loses at most the runs in progress. A file that is not a valid store is reported, never replaced.
"""
from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cifarlab.errors import CifarlabError

STORE_NAME = "store.sqlite"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    experiment TEXT NOT NULL,
    seed INTEGER NOT NULL,
    run_dir TEXT NOT NULL,          -- relative to the study folder
    model TEXT NOT NULL,
    params INTEGER NOT NULL,
    epochs INTEGER NOT NULL,
    test_acc REAL NOT NULL,         -- final epoch (never the best test epoch)
    train_acc REAL NOT NULL,        -- final epoch, on the (augmented) training batches
    test_acc_tta REAL,
    val_acc REAL,
    seconds REAL NOT NULL,          -- training wall-clock, warm-up/compile excluded
    warmup_seconds REAL NOT NULL,
    device TEXT NOT NULL,
    config TEXT NOT NULL,           -- JSON of the resolved RunConfig
    history TEXT NOT NULL,          -- JSON list of per-epoch rows
    finished TEXT NOT NULL DEFAULT (datetime('now')),
    PRIMARY KEY (experiment, seed)
);
"""


class StoreError(CifarlabError):
    """The store file is unreadable or not a cifarlab store."""


@dataclass
class RunRecord:
    experiment: str
    seed: int
    run_dir: str
    model: str
    params: int
    epochs: int
    test_acc: float
    train_acc: float
    test_acc_tta: float | None
    val_acc: float | None
    seconds: float
    warmup_seconds: float
    device: str
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def test_acc_tta6(self) -> float | None:
        """6-view TTA accuracy (flip x 1-pixel shifts), measured at the final epoch only."""
        return self.history[-1].get("test_acc_tta6") if self.history else None


class Store:
    """Open (or create) `folder/store.sqlite`."""

    def __init__(self, folder: str | Path, create: bool = True) -> None:
        self.path = Path(folder) / STORE_NAME
        if not self.path.exists() and not create:
            raise StoreError(f"no study store at '{self.path}' (run `cifarlab study` first)")
        # Readers open read-only, so nothing (not even a schema) is ever written into a file
        # that turns out not to be a store.
        uri = f"{self.path.resolve().as_uri()}?mode={'rwc' if create else 'ro'}"
        self.db = sqlite3.connect(uri, uri=True, timeout=30)
        try:
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if tables and (version != SCHEMA_VERSION or not {"meta", "runs"} <= tables):
                raise StoreError(f"'{self.path}' is not a cifarlab study store (left untouched)")
            if not tables and create:
                with self.db:
                    self.db.executescript(_SCHEMA)
                    self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            if not tables and not create:
                raise StoreError(f"'{self.path}' is an empty file, not a cifarlab study store (left untouched)")
        except sqlite3.DatabaseError as exc:
            self.db.close()
            raise StoreError(f"'{self.path}' is corrupt ({exc}); it was left untouched") from None
        except StoreError:
            self.db.close()
            raise

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        try:
            return self.db.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"'{self.path}' is corrupt ({exc}); it was left untouched") from None

    def set_meta(self, **values: Any) -> None:
        """Store JSON-able study facts (name, spec text, experiment order, baseline)."""
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                [(k, json.dumps(v)) for k, v in values.items()])

    def meta(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self._query("SELECT key, value FROM meta")}

    def done(self) -> set[tuple[str, int]]:
        """(experiment, seed) pairs already finished."""
        return {(e, s) for e, s in self._query("SELECT experiment, seed FROM runs")}

    def record(self, rec: RunRecord) -> None:
        """Insert one finished run atomically."""
        row = asdict(rec)
        row["config"] = json.dumps(rec.config)
        row["history"] = json.dumps(rec.history)
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self.db:
            self.db.execute(f"INSERT OR REPLACE INTO runs ({cols}) VALUES ({marks})", tuple(row.values()))

    def runs(self) -> list[RunRecord]:
        """Every finished run, ordered by experiment then seed."""
        names = [f.name for f in RunRecord.__dataclass_fields__.values()]  # type: ignore[attr-defined]
        rows = self._query(f"SELECT {', '.join(names)} FROM runs ORDER BY experiment, seed")
        out = []
        for r in rows:
            d = dict(zip(names, r))
            d["config"] = json.loads(d["config"])
            d["history"] = json.loads(d["history"])
            out.append(RunRecord(**d))
        return out
