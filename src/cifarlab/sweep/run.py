"""Running a sweep: workers ask Optuna for trials, train each as a run folder, and tell Optuna the result.

Objective: the final-epoch validation accuracy. Each trial's epochs are reported to Optuna as they
finish, so the spec's pruner (median or Hyperband) can stop a hopeless trial; a stopped trial keeps
its run folder and is recorded as pruned. A point of the space that is not a valid config (e.g.
alt_flip without flips, a model over the budget) is a failed trial with its reason, not a crash.
Trials never see the test set: their data has no test split. Only `retrain_winner` (--final-seeds)
reads it, once, for the best trial's config trained on every training image.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import replace
from multiprocessing import get_context
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import Trial, TrialState

from cifarlab.config import SearchParam, to_dict
from cifarlab.console import log_line, plural
from cifarlab.errors import CifarlabError, ConfigError
from cifarlab.rundir import write_json
from cifarlab.sweep import INFO_NAME
from cifarlab.sweep.spec import SweepSpec, top_epochs
from cifarlab.sweep.results import (DIGEST_ATTR, FINAL_DIR, best_trial, short, trial_dir,
                                    winner_config)
from cifarlab.sweep.storage import WORKER_ATTR, SweepStorage, counted, open_storage, retry, worker_id

FINAL_SEED_OFFSET = 1  # final seeds are train.seed + 1 ... train.seed + N: none is the seed trials used

optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own log line per trial says more


class SweepError(CifarlabError):
    """A worker process of the sweep failed."""

    exit_code = 1


def _sampler(spec: SweepSpec, number: int) -> optuna.samplers.BaseSampler:
    # Seeded per trial number, not per process: parallel workers (and machines) with the same --seed
    # would otherwise draw the same random start-up points. constant_liar makes TPE treat running
    # trials as poor results, so parallel workers spread out instead of sampling the same region.
    return optuna.samplers.TPESampler(seed=spec.options.seed + number, n_startup_trials=spec.options.random_trials,
                                      constant_liar=True)


def _pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    o = spec.options
    if o.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=o.startup_trials, n_warmup_steps=o.warmup_epochs)
    if o.pruner == "hyperband":
        top = top_epochs(spec.search, spec.config({}).train.epochs)
        return optuna.pruners.HyperbandPruner(min_resource=o.min_epochs, max_resource=top,
                                              reduction_factor=o.reduction_factor)
    return optuna.pruners.NopPruner()


def _suggest(trial: Trial, path: str, p: SearchParam) -> Any:
    if p.type == "categorical":
        return trial.suggest_categorical(path, list(p.choices))
    if p.type == "int":
        return trial.suggest_int(path, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
    return trial.suggest_float(path, p.low, p.high, step=p.step, log=p.log)


def open_study(spec: SweepSpec, storage: SweepStorage) -> optuna.Study:
    """Create or join the search named after the spec; refuse one that was started from a different spec."""
    with storage.claim(spec.name):
        study = optuna.create_study(storage=storage.optuna, study_name=spec.name, direction="maximize",
                                    load_if_exists=True, sampler=_sampler(spec, 0), pruner=_pruner(spec))
        digest = study.user_attrs.get(DIGEST_ATTR)
        if digest is None:
            study.set_user_attr(DIGEST_ATTR, spec.digest)
            study.set_user_attr("spec", spec.text)
            study.set_user_attr("description", spec.description)
            study.set_user_attr("objective", "val_acc")
        elif digest != spec.digest:
            raise ConfigError(f"{storage.where} holds sweep '{spec.name}' started from a different spec "
                              f"(digest {digest[:12]}, this spec {spec.digest[:12]}); run it with the same spec, "
                              "or use another --out / --storage")
    return study


class _Worker:
    """One process's share of the search: claim a trial, train it, tell Optuna; until the count is reached."""

    def __init__(self, spec: SweepSpec, folder: Path, url: str | None, trials: int, log: Callable[[str], None]):
        from cifarlab.experiment import load_data

        self.spec, self.folder, self.trials, self.log = spec, folder, trials, log
        self.storage = open_storage(folder, url, spec.options)
        self.study = open_study(spec, self.storage)
        # Loaded once per process, before any trial is claimed (a missing data folder is one error, not a
        # failed trial each): a sweep never varies data.*, so every trial trains on the same split. Training
        # and validation splits only, so nothing a trial does can read the test set.
        self.data = replace(load_data(spec.config({})), test=None, test_images=None)

    def claim(self) -> tuple[Trial, dict[str, Any]] | str:
        """The next trial and its values; "done" when the search has all its trials and none is running;
        "wait" when the others' running trials are all that is left (one may belong to a dead worker)."""
        with self.storage.claim(self.spec.name):
            for number in self.storage.reap(self.study):
                self.log(f"trial {number}: its worker died; its parameters are queued again")
            for number in self._orphans():
                self.log(f"trial {number}: its worker died while claiming it; a new trial takes its place")
            trials = self.study.get_trials(deepcopy=False)
            waiting = any(t.state == TrialState.WAITING for t in trials)
            if not waiting and counted(trials) >= self.trials:
                return "wait" if any(t.state == TrialState.RUNNING for t in trials) else "done"
            # Under the lock the next new trial's number is the trial count (a waiting retry keeps its values).
            self.study.sampler = _sampler(self.spec, len(trials))
            trial = self.study.ask()
            self.storage.first_beat(trial._trial_id)  # before the tag: dying in between leaves an orphan
            trial.set_user_attr(WORKER_ATTR, worker_id())
            values = {path: _suggest(trial, path, p) for path, p in self.spec.search.items()}
        return trial, values

    def _orphans(self) -> list[int]:
        """Fail the running trials that no worker has tagged: a trial is asked for and tagged under the
        claim lock we hold, so an untagged one's worker died inside its claim (a killed sweep left one,
        and the search waited for it forever)."""
        orphans = [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                   if WORKER_ATTR not in t.user_attrs]
        for trial in orphans:
            self.storage.fail_dead(self.study, trial, "its worker died while claiming it")
        return [t.number for t in orphans]

    def run(self, timeout: float | None = None) -> None:
        deadline = time.monotonic() + timeout if timeout else None
        while deadline is None or time.monotonic() < deadline:
            claimed = self.claim()
            if claimed == "done":
                return
            if claimed == "wait":
                # Stay until the running trials end: a dead worker's trial is failed after the heartbeat
                # grace period and queued again, and someone has to run it.
                time.sleep(2)  # a cheap look at the storage
                continue
            trial, values = claimed
            with self.storage.beating(trial._trial_id):
                self.run_trial(trial, values)

    def _fail(self, trial: Trial, reason: str) -> None:
        trial.set_user_attr("fail_reason", reason)
        self.study.tell(trial, state=TrialState.FAIL)
        self.log(f"trial {trial.number} failed: {reason}")

    def run_trial(self, trial: Trial, values: dict[str, Any]) -> None:
        import torch

        from cifarlab.experiment import StopRun, run_experiment

        n = trial.number
        retry_of = self.storage.optuna.get_trial(trial._trial_id).system_attrs.get("failed_trial")
        self.log(f"trial {n} started{f' (retry of trial {retry_of})' if retry_of is not None else ''}: "
                 f"{short(values)}")
        try:
            cfg = self.spec.config(values)
        except CifarlabError as exc:
            return self._fail(trial, f"invalid configuration: {exc}")
        rel = trial_dir(n)
        trial.set_user_attr("run_dir", rel)

        last: dict[str, float] = {}

        def report(row: dict) -> None:
            last["val"] = row["val_acc"]
            trial.report(row["val_acc"], row["epoch"])
            # Never after the last epoch: the work is done, and a complete trial tells TPE more.
            if row["epoch"] < cfg.train.epochs and trial.should_prune():
                raise StopRun(f"pruned after epoch {row['epoch']}")

        t0 = time.perf_counter()
        try:
            history = run_experiment(cfg, self.folder / rel, data=self.data, overwrite=True, log=None,
                                     on_epoch=report)
        except StopRun as stop:
            trial.set_user_attr("seconds", time.perf_counter() - t0)
            self.study.tell(trial, state=TrialState.PRUNED)
            return self.log(f"trial {n} {stop} (val {last['val']:.4f})")
        except (CifarlabError, MemoryError, torch.OutOfMemoryError) as exc:  # a model over the budget, a batch
            # too large for the GPU: this point of the space is unusable, the search goes on
            return self._fail(trial, str(exc) or exc.__class__.__name__)
        except BaseException as exc:
            # Interrupted (Ctrl-C, SIGTERM) or a bug: the trial is failed and its values queued again,
            # so resuming the search runs them; a bug still ends the worker with its traceback.
            trial.set_user_attr("fail_reason", f"interrupted ({exc.__class__.__name__})")
            self.study.tell(trial, state=TrialState.FAIL)
            retry(self.study, self.storage.optuna.get_trial(trial._trial_id))
            raise
        final = history.final
        value = final["val_acc"]
        trial.set_user_attr("seconds", history.meta["train_seconds"])
        trial.set_user_attr("train_acc", final["train_acc"])
        trial.set_user_attr("params", history.meta["params"])
        if history.meta.get("diverged_at_epoch"):
            trial.set_user_attr("diverged_at_epoch", history.meta["diverged_at_epoch"])
        self.study.tell(trial, value if math.isfinite(value) else 0.0)
        self.log(f"trial {n} finished: val {value:.4f} ({history.meta['train_seconds']:.1f}s)")


def _work(spec: SweepSpec, folder: Path, url: str | None, trials: int, timeout: float | None, threads: int) -> None:
    """A worker process's body (spawned for --jobs > 1)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    _Worker(spec, folder, url, trials, log_line).run(timeout)


def _write_info(folder: Path, spec: SweepSpec, storage: SweepStorage) -> None:
    path = folder / INFO_NAME
    if path.exists():
        previous = json.loads(path.read_text())
        if previous.get("name") != spec.name:
            raise ConfigError(f"'{folder}' holds sweep '{previous.get('name')}', not '{spec.name}'; choose another --out")
    write_json(path, {"name": spec.name, "digest": spec.digest, "storage": storage.where if storage.url else None})


def run_sweep(spec: SweepSpec, out: str | Path | None = None, *, url: str | None = None, trials: int | None = None,
              timeout: float | None = None, seed: int | None = None, jobs: int = 1, final_seeds: int | None = None,
              log: Callable[[str], None] = log_line) -> Path:
    """Run (or join, or resume) the search until it has `trials` trials; return the sweep folder."""
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    options = replace(spec.options, **{k: v for k, v in (("trials", trials), ("seed", seed),
                                                         ("final_seeds", final_seeds)) if v is not None})
    spec = replace(spec, options=options)
    spec.config({})  # the spec's defaults alone must make a valid run before any worker starts
    folder = Path(out) if out is not None else Path("runs") / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    storage = open_storage(folder, url, spec.options)
    study = open_study(spec, storage)
    _write_info(folder, spec, storage)
    before = counted(study.get_trials(deepcopy=False))
    log(f"sweep '{spec.name}': {plural(options.trials, 'trial')} in all, {before} already there, "
        f"{plural(jobs, 'worker')} here; storage {storage.where}")
    started = time.perf_counter()
    finished = before >= options.trials and all(t.state.is_finished() for t in study.get_trials(deepcopy=False))
    if jobs == 1:
        _Worker(spec, folder, url, options.trials, log).run(timeout)
    elif not finished:  # spawning workers costs seconds each (torch): only when there is work
        _run_processes(spec, folder, url, options.trials, timeout, jobs, log)
    log(f"{summary(study)} ({time.perf_counter() - started:.0f}s)")
    if options.final_seeds:
        retrain_winner(spec, folder, study, options.final_seeds, log)
    return folder


def _run_processes(spec, folder, url, trials, timeout, jobs, log) -> None:
    threads = max(1, (os.cpu_count() or 1) // jobs)
    ctx = get_context("spawn")
    procs = [ctx.Process(target=_work, args=(spec, folder, url, trials, timeout, threads), name=f"sweep-worker-{i}")
             for i in range(jobs)]
    for p in procs:
        p.start()
    failed = []
    try:
        running = {p.sentinel: p for p in procs}
        while running:
            # Join each worker as soon as it ends: a killed one must not linger as a zombie, which the
            # journal's dead-worker check would take for alive.
            for sentinel in wait(list(running)):
                p = running.pop(sentinel)
                p.join()
                if p.exitcode:
                    failed.append(p.name)
                    log(f"{p.name} ended with exit code {p.exitcode}; the others go on")
    except BaseException:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join()
        raise
    if failed:
        raise SweepError(f"{plural(len(failed), 'worker')} of {jobs} ended with an error (see above); rerun the "
                         "command to go on with the search")


def summary(study: optuna.Study) -> str:
    """'12 trials: 7 complete, 4 pruned, 1 failed; best trial 3: val 0.6123'."""
    trials = study.get_trials(deepcopy=False)
    states = {s: sum(t.state == s for t in trials) for s in TrialState}
    parts = [f"{states[s]} {s.name.lower()}" for s in TrialState if states[s]]
    text = f"{plural(len(trials), 'trial')}: {', '.join(parts) or 'none yet'}"
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        best = max(complete, key=lambda t: t.value)
        text += f"; best trial {best.number}: val {best.value:.4f} ({short(best.params)})"
    return text


def retrain_winner(spec: SweepSpec, folder: Path, study: optuna.Study, n: int,
                   log: Callable[[str], None] = log_line) -> Path:
    """Train the best trial's config on all training images with `n` fresh seeds, into folder/final/.

    The one place a sweep reads the test set. final/ is a study folder (store.sqlite, one experiment
    per winner, named after its trial) that `cifarlab report` reads like any other.
    """
    from cifarlab.experiment import run_experiment
    from cifarlab.store import RunRecord, Store
    from cifarlab.study import run_dir_name, with_seed

    best = best_trial(study)
    cfg = winner_config(spec, best)
    name = f"trial-{best.number}"
    out = folder / FINAL_DIR
    out.mkdir(exist_ok=True)
    with Store(out) as store:
        meta = store.meta()
        experiments = [e for e in meta.get("experiments", []) if e != name] + [name]
        descriptions = {**meta.get("descriptions", {}),
                        name: f"trial {best.number} of sweep '{spec.name}' (val {100 * best.value:.2f}%): "
                              f"{short(best.params)}; trained on all training images"}
        store.set_meta(name=f"{spec.name}-final", description=f"the winner of sweep '{spec.name}', fresh seeds",
                       spec=spec.text, experiments=experiments, descriptions=descriptions, baseline=name,
                       budget=to_dict(spec.budget), val=0, winner=best.number)
        done = store.done()
        wanted = [cfg.train.seed + FINAL_SEED_OFFSET + k for k in range(n)]
        seeds = [s for s in wanted if (name, s) not in done]
        log(f"final: trial {best.number} (val {best.value:.4f}) on all training images, seeds "
            f"{', '.join(map(str, wanted))}; {len(seeds)} to train -> {out}")
        for seed in seeds:
            run_cfg = with_seed(cfg, seed)
            rel = run_dir_name(name, seed)
            history = run_experiment(run_cfg, out / rel, overwrite=True, log=None)
            store.record(RunRecord.of_run(name, seed, rel, to_dict(run_cfg), history.rows, history.meta))
            log(f"final seed {seed}: test {history.final['test_acc']:.4f} ({history.meta['train_seconds']:.1f}s)")
    return out
