"""Where a search lives: Optuna's journal file in the sweep folder (one machine), or a PostgreSQL or Redis URL.

Optuna's storage is the only coordination point. Two things are added on top of it:

- a claim lock around "count the trials, ask for the next one", so that any number of workers stop at
  exactly the requested trial count (Optuna's MaxTrialsCallback lets each worker overshoot by the
  trials the others have in flight): a file lock beside the journal, a PostgreSQL advisory lock on a
  database, a lock key in Redis;
- dead workers: on a database, Optuna's heartbeat marks a trial whose worker stopped beating as failed
  and its RetryHeartbeatStaleTrialCallback queues the same parameters again. The journal has no
  heartbeat, but all its workers share one machine, so a running trial whose process no longer exists
  is failed and retried the same way, at once. Redis (storage_redis) keeps a key per worker that
  expires when the worker stops renewing it.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlsplit

import optuna
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from cifarlab.config import SweepOptions
from cifarlab.errors import ConfigError
from cifarlab.heartbeat import beating_thread
from cifarlab.safety import pid_alive
from cifarlab.store_pg import display_url
from cifarlab.sweep import JOURNAL_NAME

CLAIM_LOCK = ".sweep.claim.lock"
WORKER_ATTR = "worker"  # trial user attribute: "host:pid" of the process running it
RETRIES = 2  # a trial whose worker died is run again at most this often (a config that kills workers stops there)

# heartbeat_interval and fail_stale_trials are marked experimental, and Optuna warns that heartbeats are
# meant for Study.optimize: the workers here ask and tell themselves and beat in `beating`. Noise for users.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class SweepStorage:
    """An Optuna storage plus the claim lock and dead-worker handling that go with it; one subclass per kind."""

    url: str | None = None  # None: the journal file in the sweep folder
    where: str  # for messages and sweep.json: a path, or the URL with its password masked
    optuna: optuna.storages.BaseStorage

    def claim(self, study_name: str) -> contextlib.AbstractContextManager[None]:
        """Hold the search's claim lock: one worker at a time counts trials and asks for the next."""
        raise NotImplementedError

    def first_beat(self, trial_id: int) -> None:
        """Show that a trial just asked for has a live worker, under the claim lock (where liveness needs a signal)."""

    @contextlib.contextmanager
    def beating(self, trial_id: int) -> Iterator[None]:
        """Show that the trial's worker is alive until the block ends (where liveness needs a signal)."""
        yield

    def reap(self, study: optuna.Study) -> list[int]:
        """Fail the trials whose worker died and queue their parameters again; the failed trial numbers."""
        raise NotImplementedError

    def fail_dead(self, study: optuna.Study, trial: FrozenTrial, reason: str) -> None:
        """Fail a running trial whose worker is gone and queue its parameters again."""
        # The reason first: a finished trial's attributes can no longer be set.
        self.optuna.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
        self.optuna.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        retry(study, self.optuna.get_trial(trial._trial_id))


class JournalFileStorage(SweepStorage):
    """Optuna's journal file in the sweep folder: the workers of one machine."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.optuna = JournalStorage(JournalFileBackend(str(folder / JOURNAL_NAME)))
        self.where = str(folder / JOURNAL_NAME)

    @contextlib.contextmanager
    def claim(self, study_name: str) -> Iterator[None]:
        with open(self.folder / CLAIM_LOCK, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # released by the kernel if the holder dies
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def reap(self, study: optuna.Study) -> list[int]:
        # No heartbeat needed: every worker runs on this machine, so a dead one is a pid that is gone.
        host = socket.gethostname()
        failed = []
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            owner = str(trial.user_attrs.get(WORKER_ATTR, ""))
            owner_host, _, pid = owner.rpartition(":")
            if owner_host != host or not pid.isdigit() or pid_alive(int(pid)):
                continue
            self.fail_dead(study, trial, f"worker {owner} died")
            failed.append(trial.number)
        return failed


class PostgresStorage(SweepStorage):
    """Optuna's RDBStorage on PostgreSQL, with its heartbeat: workers on any number of machines."""

    def __init__(self, url: str, options: SweepOptions) -> None:
        self.url = url
        try:
            self.optuna = _rdb_storage(url, options)
        except ImportError:
            raise ConfigError("--storage postgresql:// needs a PostgreSQL driver: "
                              "pip install 'cifarlab[sweep]'") from None
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy/driver errors: unreachable server, bad credentials
            raise ConfigError(f"--storage: cannot open '{display_url(url)}': {error_line(exc, url)}") from None
        self.where = display_url(url)

    @contextlib.contextmanager
    def claim(self, study_name: str) -> Iterator[None]:
        with _advisory_lock(self.optuna.engine, f"cifarlab-sweep:{study_name}"):
            yield

    def first_beat(self, trial_id: int) -> None:
        # Optuna's stale check passes over a trial that never beat: one whose worker died between its claim
        # and `beating` would be waited for forever.
        self.optuna.record_heartbeat(trial_id)

    @contextlib.contextmanager
    def beating(self, trial_id: int) -> Iterator[None]:
        with beating_thread(lambda: self.optuna.record_heartbeat(trial_id), self.optuna.get_heartbeat_interval(),
                            f"heartbeat-{trial_id}"):
            yield

    def reap(self, study: optuna.Study) -> list[int]:
        before = retried_numbers(study.get_trials(deepcopy=False))
        optuna.storages.fail_stale_trials(study)  # heartbeat timeout -> FAIL -> retry callback
        return sorted(retried_numbers(study.get_trials(deepcopy=False)) - before)


def _redis(url: str, options: SweepOptions) -> SweepStorage:
    try:
        from cifarlab.sweep.storage_redis import RedisStorage  # imports redis-py: only for a redis:// URL
    except ImportError:
        raise ConfigError("--storage redis:// needs the redis package: pip install 'cifarlab[sweep]'") from None
    return RedisStorage(url, options)


# URL scheme (before any "+driver") -> the storage that serves it.
STORAGES: dict[str, Callable[[str, SweepOptions], SweepStorage]] = {
    "postgresql": PostgresStorage,
    "redis": _redis,
    "rediss": _redis,  # Redis over TLS
}


def open_storage(folder: Path, url: str | None, options: SweepOptions) -> SweepStorage:
    """The storage `--storage URL` names, or the journal file in `folder` without one."""
    if url is None:
        return JournalFileStorage(folder)
    maker = STORAGES.get(urlsplit(url).scheme.split("+")[0])
    if maker is None:
        raise ConfigError(f"--storage: '{display_url(url)}' is not a postgresql:// or redis:// URL (leave "
                          "--storage out for the journal file in the sweep folder)")
    return maker(url, options)


def error_line(exc: BaseException, url: str) -> str:
    """A driver's error as one line, without the URL's password should the driver have quoted it."""
    line = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
    password = urlsplit(url).password
    return line.replace(password, "***") if password else line


def _rdb_storage(url: str, options: SweepOptions) -> RDBStorage:
    """Optuna's RDBStorage with heartbeats; creating its tables is serialised between our workers."""
    import sqlalchemy.exc

    for attempt in range(3):
        try:
            # Workers starting together would each create Optuna's tables and collide: one at a time.
            with _advisory_lock(url, "cifarlab-sweep-schema"), warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, heartbeat_interval=options.heartbeat, grace_period=options.grace,
                                  heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(RETRIES),
                                  engine_kwargs={"pool_pre_ping": True})
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            # Another Optuna client outside that lock (optuna-dashboard, a script) created the same
            # tables or enum types at the same moment ("duplicate key", "already exists"); they
            # exist now, so the next attempt finds them. (The test suite's poller is such a client.)
            if attempt == 2:
                raise
            time.sleep(1)
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _advisory_lock(engine_or_url, name: str) -> Iterator[None]:
    """A PostgreSQL session-level advisory lock on a connection of its own: dropped if the holder dies."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(engine_or_url, poolclass=sqlalchemy.pool.NullPool) \
        if isinstance(engine_or_url, str) else engine_or_url
    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
        try:
            yield
        finally:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            conn.commit()


def retry(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a failed trial's parameters as a new trial, as Optuna's heartbeat does for a dead worker."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        RetryHeartbeatStaleTrialCallback(RETRIES)(study, trial)


def retried_numbers(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of trials that were run again under a new number (their worker died)."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def counted(trials: list[FrozenTrial]) -> int:
    """Trials that count towards --trials: all of them, less those a dead worker left and that were retried."""
    retried = retried_numbers(trials)
    return sum(1 for t in trials if not (t.state == TrialState.FAIL and t.number in retried))
