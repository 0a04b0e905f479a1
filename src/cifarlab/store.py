"""The study store: one SQLite file per study folder recording every finished run.

A run is recorded in one transaction after its run folder is complete, so killing a study
loses at most the runs in progress. A file that is not a valid store is reported, never replaced.
"""
from __future__ import annotations

import json
import sqlite3
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from cifarlab.errors import CifarlabError
from cifarlab.metrics import COLUMNS, FINAL

STORE_NAME = "store.sqlite"
SCHEMA_VERSION = 2  # 2: one column per final metric in metrics.FINAL (version 1 had four, fixed)

# The run's facts; the final-epoch metrics (metrics.FINAL) follow as nullable REAL columns, so the
# store can be queried with plain SQL (`SELECT experiment, avg(test_acc) FROM runs GROUP BY 1`).
_RUN_COLUMNS = """
    experiment TEXT NOT NULL,
    seed INTEGER NOT NULL,
    run_dir TEXT NOT NULL,          -- relative to the study folder
    model TEXT NOT NULL,
    params INTEGER NOT NULL,
    epochs INTEGER NOT NULL,
    seconds REAL NOT NULL,          -- training wall-clock, warm-up/compile excluded
    warmup_seconds REAL NOT NULL,
    device TEXT NOT NULL,
    config TEXT NOT NULL,           -- JSON of the resolved RunConfig
    history TEXT NOT NULL,          -- JSON list of per-epoch rows (metrics.COLUMNS)
    finished TEXT NOT NULL DEFAULT (datetime('now')),"""
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs ({_RUN_COLUMNS}
    {"".join(f"{m} REAL, " for m in FINAL)}
    PRIMARY KEY (experiment, seed)
);
"""


class StoreError(CifarlabError):
    """The store file is unreadable or not a cifarlab store."""


@dataclass
class RunRecord:
    """One finished run; `rec.test_acc` and the other metrics.FINAL names give its final-epoch values."""

    experiment: str
    seed: int
    run_dir: str
    model: str
    params: int
    epochs: int
    seconds: float
    warmup_seconds: float
    device: str
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of_run(cls, experiment: str, seed: int, run_dir: str, config: dict[str, Any], rows: list[dict[str, Any]],
               meta: dict[str, Any]) -> "RunRecord":
        """The record of a finished run from its history rows and meta (train.History)."""
        return cls(experiment, seed, run_dir, config["model"]["name"], meta["params"], len(rows), meta["train_seconds"],
                   meta["warmup_seconds"], meta["device"], config, rows)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not fields: the final metrics, None where not measured.
        if name in FINAL:
            history = self.__dict__.get("history") or [{}]
            return history[-1].get(name)
        raise AttributeError(name)

    @property
    def diverged(self) -> bool:
        """The loss became NaN/inf (train.train stops the run there)."""
        return any(row.get("diverged") for row in self.history)

    def row(self) -> dict[str, Any]:
        """Column -> value as a store keeps the run: config and history as JSON, the final metrics beside them."""
        return {**asdict(self), "config": json.dumps(self.config), "history": json.dumps(self.history),
                **{name: getattr(self, name) for name in FINAL}}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def record_problem(d: dict[str, Any]) -> str | None:
    """What makes a stored row unusable (a wrong type, a history row without its metrics), or None."""
    types = {"experiment": str, "seed": int, "run_dir": str, "model": str, "params": int, "epochs": int,
             "seconds": float, "warmup_seconds": float, "device": str, "config": dict, "history": list}
    for key, kind in types.items():
        value = d.get(key)
        ok = _number(value) and (kind is float or isinstance(value, int)) if kind in (int, float) \
            else isinstance(value, kind)
        if not ok:
            return f"'{key}' is {type(value).__name__}, not {kind.__name__}"
    parts = [d["config"].get(k, {}) for k in ("data", "model", "train")]
    if not all(isinstance(part, dict) for part in parts) or not isinstance(parts[1].get("options", {}), dict):
        return "its config is not a table of tables"
    if not d["history"]:
        return "its history is empty"
    for row in d["history"]:
        if not isinstance(row, dict) or not _number(row.get("epoch")):
            return "a history row has no epoch number"
        bad = next((k for k in COLUMNS if k in row and not _number(row[k])), None)
        if bad:
            return f"history value '{bad}' is {row[bad]!r}, not a number"
    missing = [k for k in ("train_acc", "test_acc") if k not in d["history"][-1]]
    if missing:
        return f"its last history row lacks {', '.join(missing)}"
    return None


class Store(AbstractContextManager):
    """Open (or create) `folder/store.sqlite`."""

    def __init__(self, folder: str | Path, create: bool = True) -> None:
        self.path = Path(folder) / STORE_NAME
        if not self.path.exists() and not create:
            raise StoreError(f"no study store at '{self.path}' (run `cifarlab study` first)")
        # Readers open read-only, so nothing (not even a schema) is ever written into a file
        # that turns out not to be a store.
        uri = f"{self.path.resolve().as_uri()}?mode={'rwc' if create else 'ro'}"
        try:
            self.db = sqlite3.connect(uri, uri=True, timeout=30)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open '{self.path}' ({exc})") from None
        try:
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if tables and (version not in (1, SCHEMA_VERSION) or not {"meta", "runs"} <= tables):
                raise StoreError(f"'{self.path}' is not a cifarlab study store (left untouched)")
            if tables and version < SCHEMA_VERSION and create:
                self._upgrade()
            if not tables and create:
                with self.db:
                    self.db.executescript(_SCHEMA)
                    self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            if not tables and not create:
                raise StoreError(f"'{self.path}' is an empty file, not a cifarlab study store (left untouched)")
        except sqlite3.Error as exc:
            self.db.close()
            raise StoreError(f"'{self.path}' is corrupt ({exc}); it was left untouched") from None
        except StoreError:
            self.db.close()
            raise

    def _upgrade(self) -> None:
        """Add the metric columns a store written by an older cifarlab lacks (version 1 -> 2)."""
        have = {r[1] for r in self.db.execute("PRAGMA table_info(runs)")}
        with self.db:
            for name in FINAL:
                if name not in have:
                    self.db.execute(f"ALTER TABLE runs ADD COLUMN {name} REAL")
            self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        self.db.close()

    def __exit__(self, *exc) -> None:
        self.close()

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        try:
            return self.db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"'{self.path}' is corrupt ({exc}); it was left untouched") from None

    def set_meta(self, **values: Any) -> None:
        """Store JSON-able study facts (name, spec text, experiment order, baseline)."""
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                [(k, json.dumps(v)) for k, v in values.items()])

    def meta(self, damaged: list[str] | None = None) -> dict[str, Any]:
        """The study facts; a value that is not JSON is left out and described in `damaged`
        (StoreError when no list is given)."""
        out = {}
        for key, value in self._query("SELECT key, value FROM meta"):
            try:
                out[str(key)] = json.loads(value)
            except Exception:  # noqa: BLE001 - not JSON, not text, nested too deep, ...
                self._damaged(f"study fact '{key}' in '{self.path}' is not valid JSON", damaged)
        return out

    def _damaged(self, problem: str, damaged: list[str] | None) -> None:
        if damaged is None:
            raise StoreError(f"{problem}; the store was left untouched")
        damaged.append(problem)

    def done(self) -> set[tuple[str, int]]:
        """(experiment, seed) pairs already finished."""
        return {(e, s) for e, s in self._query("SELECT experiment, seed FROM runs")}

    def record(self, rec: RunRecord) -> None:
        """Insert one finished run atomically."""
        row = rec.row()
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self.db:
            self.db.execute(f"INSERT OR REPLACE INTO runs ({cols}) VALUES ({marks})", tuple(row.values()))

    def runs(self, damaged: list[str] | None = None) -> list[RunRecord]:
        """Every finished run, ordered by experiment then seed.

        A row that cannot be read back (invalid JSON, wrong types, history without its metrics) is
        left out and described in `damaged`; without a list it is a StoreError.
        """
        names = [f.name for f in fields(RunRecord)]
        rows = self._query(f"SELECT {', '.join(names)} FROM runs ORDER BY experiment, seed")
        out = []
        for r in rows:
            d = dict(zip(names, r))
            try:
                d["config"], d["history"] = json.loads(d["config"]), json.loads(d["history"])
            except Exception as exc:  # noqa: BLE001 - not JSON, not text, nested too deep, ...
                problem = f"not valid JSON ({exc.__class__.__name__})"
            else:
                problem = record_problem(d)
            if problem:
                self._damaged(f"run '{d['experiment']}' seed {d['seed']} in '{self.path}' is damaged: {problem}",
                              damaged)
                continue
            out.append(RunRecord(**d))
        return out
