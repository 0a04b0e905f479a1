"""A study spread over processes and machines: the runs are claimed from a shared PostgreSQL store.

Every worker started with the same spec and `--storage URL` takes the next unclaimed (experiment,
seed) from store_pg.PgStore, trains it into its own machine's study folder and records it in the
database, where `cifarlab report DIR --storage URL` reads it back like a local store.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from cifarlab.console import log_line, plural
from cifarlab.store_pg import MARKER, PgStore, display_url
from cifarlab.study import StudySpec, _clear_stale, _pool, _run_one, as_finished, with_seed

# A shared study's claims: a worker beats every CLAIM_HEARTBEAT seconds while it trains; a run whose
# worker has not beaten for CLAIM_GRACE seconds (killed, machine gone) is handed to another worker.
CLAIM_HEARTBEAT = 10
CLAIM_GRACE = 60
WAIT_POLL = 2  # seconds between looks at the claims while the last runs are trained elsewhere


def run_shared(spec: StudySpec, folder: Path, url: str, store, n_seeds: int, jobs: int, log,
               tensorboard: Path | None = None) -> Path:
    """This machine's workers take runs from the shared store until every run is recorded (with one
    worker, the epoch lines of its run in flight go to `log`; `tensorboard` as for run_study)."""
    (folder / MARKER).write_text(json.dumps({"name": spec.name, "storage": display_url(url)}, indent=2) + "\n")
    store.add_tasks([(exp.name, seed, i) for i, exp in enumerate(spec.experiments) for seed in range(n_seeds)])
    total = len(spec.experiments) * n_seeds
    log(f"study '{spec.name}': {plural(total, 'run')} in {display_url(url)}, {len(store.done())} already "
        f"finished; {plural(jobs, 'worker')} here -> {folder}")
    _clear_stale(folder)
    args = (spec, folder, url)
    if jobs == 1:
        shared_worker(*args, log=log, tensorboard=tensorboard)
    else:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        with _pool(jobs) as pool:
            for future in as_finished([pool.submit(shared_worker, *args, threads, tensorboard=tensorboard)
                                       for _ in range(jobs)]):
                future.result()
    return folder


def shared_worker(spec: StudySpec, folder: Path, url: str, threads: int = 0, log=None,
                  tensorboard: Path | None = None) -> None:
    """Claim, train and record runs of a shared study until none is left (one process); `log`: the
    epoch lines of each run, prefixed as in run_study."""
    worker = f"{socket.gethostname()}:{os.getpid()}"
    configs = {e.name: e.config for e in spec.experiments}
    with PgStore(url, spec.name) as store:
        while True:
            claimed = store.claim(worker, CLAIM_GRACE)
            if claimed == "done":
                return
            if claimed == "wait":  # the rest is being trained elsewhere; stay in case a worker dies
                time.sleep(WAIT_POLL)
                continue
            name, seed = claimed
            log_line(f"{name} seed {seed}: started by {worker}")
            with store.holding(name, seed, worker, CLAIM_HEARTBEAT):
                rec = _run_one(name, seed, with_seed(configs[name], seed), folder, threads, log, tensorboard)
            store.record(rec, worker)
            log_line(f"{name} seed {seed}: val {rec.val_acc if rec.val_acc is not None else float('nan'):.4f} "
                     f"test {rec.test_acc:.4f} ({rec.seconds:.1f}s)")

