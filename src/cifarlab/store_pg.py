"""A study store in PostgreSQL, so that workers on several machines share one study (`--storage URL`).

Same interface as store.Store (meta, set_meta, done, record, runs), for the same RunRecords, plus the
claims that hand each (experiment, seed) to exactly one worker: a worker takes the next unclaimed run
with `SELECT ... FOR UPDATE SKIP LOCKED` (so two workers never block on or take the same row), keeps
a heartbeat on it while training, and records the finished run; a run whose worker stopped beating
for `grace` seconds is handed out again. Several studies share the tables, keyed by study name.
Needs psycopg (`pip install 'cifarlab[sweep]'`).
"""
from __future__ import annotations

import datetime as dt
import json
from urllib.parse import urlsplit, urlunsplit
from contextlib import AbstractContextManager, contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterator

from cifarlab.errors import ConfigError
from cifarlab.heartbeat import beating_thread
from cifarlab.metrics import FINAL
from cifarlab.store import RunRecord, StoreError

MARKER = "study.json"  # in a shared study's folder: its name and (masked) storage URL, for `cifarlab report`
_COLUMNS = [f.name for f in fields(RunRecord)]
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS cifarlab_meta (
    study TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (study, key));
CREATE TABLE IF NOT EXISTS cifarlab_runs (
    study TEXT NOT NULL, experiment TEXT NOT NULL, seed INTEGER NOT NULL, run_dir TEXT NOT NULL,
    model TEXT NOT NULL, params INTEGER NOT NULL, epochs INTEGER NOT NULL, seconds DOUBLE PRECISION NOT NULL,
    warmup_seconds DOUBLE PRECISION NOT NULL, device TEXT NOT NULL, config TEXT NOT NULL, history TEXT NOT NULL,
    worker TEXT, finished TIMESTAMPTZ NOT NULL DEFAULT now(),
    {"".join(f"{m} DOUBLE PRECISION, " for m in FINAL)}
    PRIMARY KEY (study, experiment, seed));
CREATE TABLE IF NOT EXISTS cifarlab_claims (
    study TEXT NOT NULL, experiment TEXT NOT NULL, seed INTEGER NOT NULL,
    position INTEGER NOT NULL,      -- the experiment's place in the spec: runs are handed out in spec order
    worker TEXT,                    -- host:pid of the worker training it, NULL until claimed
    heartbeat TIMESTAMPTZ,
    PRIMARY KEY (study, experiment, seed));
"""
# The next run nobody finished and nobody live holds; SKIP LOCKED passes over rows another worker is
# claiming at this moment instead of waiting for it.
_CLAIM = """
WITH next AS (
    SELECT c.experiment, c.seed FROM cifarlab_claims c
    WHERE c.study = %(study)s
      AND NOT EXISTS (SELECT 1 FROM cifarlab_runs r
                      WHERE r.study = c.study AND r.experiment = c.experiment AND r.seed = c.seed)
      AND (c.worker IS NULL OR c.heartbeat < now() - make_interval(secs => %(grace)s))
    ORDER BY c.position, c.seed
    LIMIT 1
    FOR UPDATE SKIP LOCKED)
UPDATE cifarlab_claims c SET worker = %(worker)s, heartbeat = now()
FROM next WHERE c.study = %(study)s AND c.experiment = next.experiment AND c.seed = next.seed
RETURNING c.experiment, c.seed
"""
_PENDING = """
SELECT count(*) FROM cifarlab_claims c
WHERE c.study = %(study)s AND NOT EXISTS (SELECT 1 FROM cifarlab_runs r
    WHERE r.study = c.study AND r.experiment = c.experiment AND r.seed = c.seed)
"""


def display_url(url: str) -> str:
    """The URL with its password masked, fit for logs, reports and marker files."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))


def _connect(url: str):
    try:
        import psycopg
    except ImportError:
        raise ConfigError("--storage postgresql:// needs psycopg: pip install 'cifarlab[sweep]'") from None
    try:
        return psycopg.connect(url, autocommit=True)
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        raise ConfigError(f"--storage: cannot open '{display_url(url)}': {first}") from None


class PgStore(AbstractContextManager):
    """The runs and meta of study `name` in the database at `url` (store.Store's interface)."""

    def __init__(self, url: str, name: str, create: bool = True) -> None:
        if not url.startswith(("postgresql://", "postgres://")):
            raise ConfigError(f"--storage: '{display_url(url)}' is not a postgresql:// URL")
        self.url, self.name = url, name
        self.db = _connect(url)
        if create:
            with self.db.transaction():
                # Workers starting together would collide creating the tables: one at a time.
                self.db.execute("SELECT pg_advisory_xact_lock(hashtext('cifarlab-store-schema'))")
                self.db.execute(_SCHEMA)
        elif not self._query("SELECT 1 FROM information_schema.tables WHERE table_name = 'cifarlab_runs'"):
            raise StoreError("the database holds no cifarlab study (run `cifarlab study --storage` first)")

    def close(self) -> None:
        self.db.close()

    def __exit__(self, *exc) -> None:
        self.close()

    def _query(self, sql: str, params: dict | tuple = ()) -> list[tuple]:
        return self.db.execute(sql, params).fetchall()

    def set_meta(self, **values: Any) -> None:
        with self.db.transaction():
            for key, value in values.items():
                self.db.execute("INSERT INTO cifarlab_meta VALUES (%s, %s, %s) ON CONFLICT (study, key) "
                                "DO UPDATE SET value = EXCLUDED.value", (self.name, key, json.dumps(value)))

    def meta(self, damaged: list[str] | None = None) -> dict[str, Any]:
        """The study facts (store.Store.meta; `damaged` is accepted for its interface: every value here was
        written by PgStore as JSON)."""
        return {k: json.loads(v) for k, v in self._query("SELECT key, value FROM cifarlab_meta WHERE study = %s",
                                                         (self.name,))}

    def done(self) -> set[tuple[str, int]]:
        return {(e, s) for e, s in self._query("SELECT experiment, seed FROM cifarlab_runs WHERE study = %s",
                                               (self.name,))}

    def record(self, rec: RunRecord, worker: str | None = None) -> None:
        row = {"study": self.name, **rec.row(), "worker": worker}
        cols = ", ".join(row)
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in row if c not in ("study", "experiment", "seed"))
        self.db.execute(f"INSERT INTO cifarlab_runs ({cols}) VALUES ({', '.join(['%s'] * len(row))}) "
                        f"ON CONFLICT (study, experiment, seed) DO UPDATE SET {updates}, finished = now()",
                        tuple(row.values()))

    def runs(self, damaged: list[str] | None = None) -> list[RunRecord]:
        """Every finished run, ordered by experiment then seed (store.Store.runs)."""
        rows = self._query(f"SELECT {', '.join(_COLUMNS)} FROM cifarlab_runs WHERE study = %s "
                           "ORDER BY experiment, seed", (self.name,))
        out = []
        for r in rows:
            d = dict(zip(_COLUMNS, r))
            d["config"], d["history"] = json.loads(d["config"]), json.loads(d["history"])
            out.append(RunRecord(**d))
        return out

    def last_finished(self):
        """When the last run was recorded (the report's 'last run recorded'), or None."""
        return self._query("SELECT max(finished) FROM cifarlab_runs WHERE study = %s", (self.name,))[0][0]

    # -- claims ------------------------------------------------------------------------------

    def add_tasks(self, tasks: list[tuple[str, int, int]]) -> None:
        """Make (experiment, seed, position) claimable; ones already there keep their state."""
        with self.db.transaction():
            for experiment, seed, position in tasks:
                self.db.execute("INSERT INTO cifarlab_claims VALUES (%s, %s, %s, %s, NULL, NULL) "
                                "ON CONFLICT DO NOTHING", (self.name, experiment, seed, position))

    def claim(self, worker: str, grace: float) -> tuple[str, int] | str:
        """(experiment, seed) now held by `worker`; "wait" when only runs held by live workers are left;
        "done" when every run is recorded."""
        with self.db.transaction():
            row = self.db.execute(_CLAIM, {"study": self.name, "worker": worker, "grace": grace}).fetchone()
        if row is not None:
            return row[0], row[1]
        return "wait" if self._query(_PENDING, {"study": self.name})[0][0] else "done"

    @contextmanager
    def holding(self, experiment: str, seed: int, worker: str, interval: float) -> Iterator[None]:
        """Beat the claim's heartbeat every `interval` seconds (own connection) until the block ends."""
        conn = _connect(self.url)

        def beat() -> None:
            conn.execute("UPDATE cifarlab_claims SET heartbeat = now() WHERE study = %s AND experiment = %s "
                         "AND seed = %s AND worker = %s", (self.name, experiment, seed, worker))

        try:
            with beating_thread(beat, interval, "claim-heartbeat"):
                yield
        finally:
            conn.close()


def read_shared(folder: Path, url: str):
    """(meta, runs, last recorded) of the shared study whose marker is in `folder`, for the report."""
    marker = folder / MARKER
    if not marker.is_file():
        raise ConfigError(f"'{folder}' holds no {MARKER}: run `cifarlab study SPEC --storage URL --out {folder}` "
                          "there first (it names the study)")
    with PgStore(url, json.loads(marker.read_text())["name"], create=False) as store:
        last = store.last_finished()  # timezone-aware; the report shows local time like a store file's mtime
        return store.meta(), store.runs(), last.astimezone().replace(tzinfo=None) if last else dt.datetime.now()
