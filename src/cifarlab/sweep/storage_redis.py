"""A search in Redis (`--storage redis://[:password@]host:port/db`): Optuna's Redis journal plus what it lacks.

Optuna's JournalRedisBackend keeps the search's log in Redis (keys ':log_number', ':log:N', ':snapshot'),
so workers on any machine share it, and optuna-dashboard reads it from the same URL. It has neither a
lock for our "count the trials, ask for the next one" nor a heartbeat; two kinds of keys of our own
beside Optuna's give both:

- `cifarlab-sweep:<study>:claim`, the claim lock: redis-py's Lock (SET NX PX with a random token,
  released by a script that deletes only its own token). It expires after CLAIM_TTL seconds, so a
  worker killed while holding it holds up the others that long at most;
- `cifarlab-sweep:worker:<host:pid>`, one per worker, set for `[sweep] grace` seconds when it claims a
  trial and renewed every `[sweep] heartbeat` seconds while it trains. A running trial whose worker's
  key has expired is failed and its parameters queued again, as Optuna's heartbeat does on PostgreSQL.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Iterator
from urllib.parse import urlsplit

import optuna
import redis
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalRedisBackend
from optuna.trial import TrialState

from cifarlab.config import SweepOptions
from cifarlab.errors import ConfigError
from cifarlab.store_pg import display_url
from cifarlab.heartbeat import beating_thread
from cifarlab.sweep.storage import WORKER_ATTR, SweepStorage, error_line, worker_id

CLAIM_TTL = 30  # s; the work under the lock (reading the journal's new entries, one TPE ask) takes well under 1 s
CONNECT_TIMEOUT = 10  # s; an unreachable host is an error after this long, not a hang
KEY = "cifarlab-sweep"


def worker_key(worker: str) -> str:
    return f"{KEY}:worker:{worker}"


class RedisStorage(SweepStorage):
    """Optuna's journal in Redis, with a claim lock and worker keys kept in the same database."""

    def __init__(self, url: str, options: SweepOptions) -> None:
        self.url = url
        self.where = display_url(url)
        self.ttl_ms = 1000 * options.grace
        self.interval = options.heartbeat
        db = urlsplit(url).path.strip("/")
        if db and not db.isdigit():  # redis-py would quietly use database 0: perhaps someone else's search
            raise ConfigError(f"--storage: '{self.where}': the database after the host is a number "
                              f"(redis://host:port/0), not '{db}'")
        try:
            self.client = redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT)
            self.client.ping()  # Optuna's own client would hang or fail later, with a traceback
            with warnings.catch_warnings():  # "JournalRedisBackend is experimental": noise for users
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self.optuna = JournalStorage(JournalRedisBackend(url))
        except (ValueError, redis.RedisError) as exc:  # a bad port, no server, a wrong password
            raise ConfigError(f"--storage: cannot open '{self.where}': {error_line(exc, url)}") from None

    @contextlib.contextmanager
    def claim(self, study_name: str) -> Iterator[None]:
        with self.client.lock(f"{KEY}:{study_name}:claim", timeout=CLAIM_TTL, sleep=0.05):
            yield

    def first_beat(self, trial_id: int) -> None:
        # Under the claim lock: the trial just asked for has a live worker key by the time any other worker
        # can look for dead ones (beating renews it from here on).
        self._beat()

    @contextlib.contextmanager
    def beating(self, trial_id: int) -> Iterator[None]:
        with beating_thread(self._beat, self.interval, f"heartbeat-{trial_id}"):
            yield

    def _beat(self) -> None:
        try:
            self.client.set(worker_key(worker_id()), 1, px=self.ttl_ms)
        except redis.RedisError:
            pass  # a blip: the next beat tries again (an outage longer than grace fails the trial, as it should)

    def reap(self, study: optuna.Study) -> list[int]:
        # Called under the claim lock, where no worker is between asking for a trial and naming itself on
        # it: a running trial without a worker name lost its worker in between, and is dead too.
        failed = []
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            owner = str(trial.user_attrs.get(WORKER_ATTR, ""))
            if owner and self.client.exists(worker_key(owner)):
                continue
            self.fail_dead(study, trial, f"worker {owner or '(unknown)'} stopped beating for "
                                         f"{self.ttl_ms // 1000} s")
            failed.append(trial.number)
        return failed
