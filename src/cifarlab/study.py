"""Studies: a TOML spec -> experiments x seeds -> runs recorded in the study store, resumable.

The spec layout is `config.SpecFile` (see studies/*.toml): a name, seeds, a budget, `data` / `model`
/ `train` tables of defaults, and `[[experiments]]` (`config.ExperimentEntry`) whose tables override
the defaults key by key. Each experiment's merged tables are parsed as a `config.RunConfig`.
"""
from __future__ import annotations

import os
import time
import tomllib
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, replace
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from cifarlab import signals
from cifarlab.config import (Budget, RunConfig, SettingError, SpecFile, comparable, folder_name_problem, from_dict,
                             merge, to_dict)
from cifarlab.console import log_line, plural
from cifarlab.errors import CifarlabError, ConfigError
from cifarlab.locks import FolderLock
from cifarlab.safety import clear_stale_stages, out_problem
from cifarlab.store import RunRecord, Store

if TYPE_CHECKING:
    from cifarlab.data import DataSplits


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    baseline: bool
    config: RunConfig  # seed 0; each run replaces train.seed


@dataclass(frozen=True)
class StudySpec:
    name: str
    description: str
    seeds: int
    budget: Budget
    experiments: tuple[Experiment, ...]
    path: Path
    text: str
    seeds_together: str = "auto"  # config.SpecFile.seeds_together

    @property
    def baseline(self) -> str | None:
        return next((e.name for e in self.experiments if e.baseline), None)

    @property
    def max_params(self) -> int | None:
        return self.budget.max_params

    @property
    def max_epochs(self) -> int | None:
        return self.budget.max_epochs


def load_spec(path: str | Path) -> StudySpec:
    """Parse and fully validate a study spec; every problem names the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study spec '{path}' does not exist")
    text = path.read_text()
    try:
        spec = from_dict(SpecFile, tomllib.loads(text))
        experiments = tuple(_experiment(spec, entry, path.resolve().parent) for entry in spec.experiments)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    name = spec.name or path.stem
    problem = folder_name_problem(name)  # a name from the file's name is checked like one from the spec
    if problem:
        raise ConfigError(f"{path}: the study's name (from the file name; set `name` to choose one): {problem}")
    return StudySpec(name, spec.description, spec.seeds, spec.budget, experiments, path, text, spec.seeds_together)


def _experiment(spec: SpecFile, entry, folder: Path) -> Experiment:
    """An experiment's RunConfig: the spec's defaults, overridden key by key, within the budget."""
    where = f"experiments.{entry.name}"
    merged = {k: merge(getattr(spec, k), getattr(entry, k)) for k in ("data", "model", "train")}
    from cifarlab.models.external import resolve

    cfg = from_dict(RunConfig, {**merged, "max_params": spec.budget.max_params}, where)
    try:  # `name = "models.py:Net"` is found beside the spec, whatever the working directory or process
        cfg = replace(cfg, model=resolve(cfg.model, base=folder))
    except ConfigError as exc:
        raise ConfigError(f"{where}.model.name: {exc}") from None
    if spec.budget.max_epochs is not None and cfg.train.epochs > spec.budget.max_epochs:
        raise SettingError((where, "train", "epochs"),
                           f"{cfg.train.epochs} epochs exceed the budget of {spec.budget.max_epochs}")
    return Experiment(entry.name, entry.description, entry.baseline, cfg)


def check_models(spec: StudySpec) -> dict[str, int]:
    """Build every experiment's model once: unknown options and budget violations fail before training."""
    from cifarlab.data import CLASSES
    from cifarlab.models import check_budget, check_output, model_from_config

    params = {}
    for exp in spec.experiments:
        try:
            model = model_from_config(exp.config.model)
            check_output(model, f"model '{exp.config.model.name}'", len(CLASSES))
            params[exp.name] = check_budget(model, spec.max_params, f"experiment '{exp.name}' ({exp.config.model.name})")
        except CifarlabError as exc:
            raise type(exc)(f"{spec.path}: experiments.{exp.name}.model: {exc}") from None
    return params


def with_seed(cfg: RunConfig, seed: int) -> RunConfig:
    return replace(cfg, train=replace(cfg.train, seed=seed))


def run_dir_name(experiment: str, seed: int) -> str:
    return f"{experiment}/seed-{seed}"


_IN_WORKER = False  # True in pool workers (_start_worker)


def _run_one(experiment: str, seed: int, cfg: RunConfig, folder: Path, threads: int = 0,
             log: Callable[[str], None] | None = None, tensorboard: Path | None = None) -> RunRecord:
    """Train one (experiment, seed) into its run folder; runs in a worker process when --jobs > 1.

    `log`: the run's epoch lines, prefixed `[experiment seed k]`; `tensorboard`: write its scalars
    into <tensorboard>/<experiment>/seed-<k>."""
    import torch

    from cifarlab.experiment import run_experiment
    from cifarlab.tensorboard_log import EpochScalars

    if threads:
        torch.set_num_threads(threads)
    rel = run_dir_name(experiment, seed)
    prefix = f"[{experiment} seed {seed}] "
    # overwrite: a run folder the store does not list (its study was killed between the two) is redone;
    # resume: a run the study was stopped in (.incomplete) or killed in (its stage) goes on from its checkpoint.
    with EpochScalars(Path(tensorboard) / rel) if tensorboard is not None else nullcontext() as scalars, \
            signals.interruptible() if _IN_WORKER else nullcontext():
        history = run_experiment(cfg, folder / rel, data=_study_data(cfg), overwrite=True, resume="auto",
                                 on_epoch=scalars, log=None if log is None else lambda line: log(prefix + line))
    return RunRecord.of_run(experiment, seed, rel, to_dict(cfg), history.rows, history.meta)


def _run_seeds(experiment: str, seeds: tuple[int, ...], cfg: RunConfig, folder: Path, threads: int = 0,
               log: Callable[[str], None] | None = None, tensorboard: Path | None = None) -> list[RunRecord]:
    """Train `seeds` of one experiment: one run as `_run_one`, several together in this process
    (experiment.run_experiments), each into its own run folder; their records."""
    if len(seeds) == 1:
        return [_run_one(experiment, seeds[0], with_seed(cfg, seeds[0]), folder, threads, log, tensorboard)]
    import torch

    from cifarlab.experiment import run_experiments
    from cifarlab.tensorboard_log import EpochScalars

    if threads:
        torch.set_num_threads(threads)
    cfgs = [with_seed(cfg, seed) for seed in seeds]
    rels = [run_dir_name(experiment, seed) for seed in seeds]
    logs = [None if log is None else partial(_prefixed, log, f"[{experiment} seed {seed}] ") for seed in seeds]
    with ExitStack() as context:
        scalars = [context.enter_context(EpochScalars(Path(tensorboard) / rel)) if tensorboard is not None else None
                   for rel in rels]
        if _IN_WORKER:
            context.enter_context(signals.interruptible())
        # A fallback to one seed at a time is said even by a silent worker: it explains the study's pace.
        histories = run_experiments(cfgs, [folder / rel for rel in rels], data=_study_data(cfg), logs=logs,
                                    on_epochs=scalars, log=log or log_line)
    return [RunRecord.of_run(experiment, seed, rel, to_dict(c), h.rows, h.meta)
            for seed, rel, c, h in zip(seeds, rels, cfgs, histories)]


def _prefixed(log: Callable[[str], None], prefix: str, line: str) -> None:
    log(prefix + line)


def _together(spec: StudySpec, mode: str, storage: str | None, log: Callable[[str], None]) -> set[str]:
    """The experiments whose seeds train together (`--seeds-together`; auto = on with CUDA), each
    fallback said in one line."""
    from cifarlab.train import resolve_device, together_problem

    if mode == "off":
        return set()
    if storage is not None:  # the shared store hands out one (experiment, seed) at a time
        if mode == "on":
            log("seeds together: off with --storage (a shared study's workers claim one run at a time)")
        return set()
    names = set()
    for exp in spec.experiments:
        if mode == "auto" and resolve_device(exp.config.train.device).type != "cuda":
            continue
        problem = together_problem(exp.config.train)
        if problem is None:
            names.add(exp.name)
        else:
            log(f"seeds together: off for experiment '{exp.name}' ({problem}); its seeds train one at a time")
    return names


_DATA: tuple = (None, None)  # (DataConfig, DataSplits): what this process last loaded for a study run


def _study_data(cfg: RunConfig) -> DataSplits:
    """The run's data, loaded once per process while the runs share one data config (a study's usually do):
    each later run skips the folder's fingerprint, the cache read and the split (~0.8 s on a 2-core CPU).
    Training never writes into it (tests/test_study.py checks two runs on one copy)."""
    from cifarlab.experiment import load_data

    global _DATA
    if _DATA[0] != cfg.data:
        _DATA = (None, None)  # let the old copy go before the new one is read
        _DATA = (cfg.data, load_data(cfg))
    return _DATA[1]


def _start_worker(parent: int, devices) -> None:
    """Pool initializer: die with the study process, ignore signals between tasks, take a GPU."""
    global _IN_WORKER
    _IN_WORKER = True
    signals.die_with_parent(parent)  # a killed study must not leave workers training behind its back
    signals.ignore_interrupts()  # between tasks; the parent stops its workers itself
    if devices is not None:
        _init_worker(devices)


def _init_worker(devices) -> None:
    # One GPU per pool worker for the worker's life: tying GPUs to workers, not to task numbers,
    # keeps two runs from sharing one GPU while another idles. "auto" reads it (train.resolve_device).
    os.environ["CIFARLAB_DEVICE"] = devices.get()


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


# --jobs auto with CUDA: processes per GPU. Several processes hide each other's setup and host time on
# one GPU. Measured on an H100 with the captured step (8 budget-net runs, BENCHMARKS.md): 6.5 runs per
# minute with 2 processes, 8.0 with 4, 8.1 with 8; 4 is as fast as 8 with half the memory.
CUDA_JOBS = 4


def auto_jobs(runs: int) -> int:
    """--jobs auto: one process on a CPU (its threads already use every core), CUDA_JOBS per GPU with CUDA."""
    gpus = _gpu_count()
    return max(1, min(runs, CUDA_JOBS * gpus)) if gpus else 1


def run_study(spec: StudySpec, out: str | Path | None = None, seeds: int | None = None, jobs: int | str = 1,
              log: Callable[[str], None] = log_line, storage: str | None = None,
              tensorboard: str | Path | None = None, seeds_together: str | None = None) -> Path:
    """Run every (experiment, seed) not yet in the store; return the study folder.

    With one job the epoch lines of the run in flight are logged, prefixed `[experiment seed k]`; with
    several, one line per finished run. `tensorboard`: each run's scalars in
    <tensorboard>/<study folder's name>/<experiment>/seed-<k>, so that studies sharing a log folder
    keep their runs apart (as `train` writes to <tensorboard>/<name of --out>).

    With `storage` (a postgresql:// URL) the store is that database, shared by every worker started with
    the same spec and URL, on any machine: each takes the next unclaimed run (store_pg.PgStore.claim),
    so each run is done once; run folders stay on the machine that trained them.

    `seeds_together` (default: the spec's `seeds_together`): "on" trains the seeds of an experiment that
    are left to run as one batched computation in one process (train.train_seeds), "auto" does so with
    CUDA; each (experiment, seed) is still its own run, folder and record.
    """
    n_seeds = seeds if seeds is not None else spec.seeds
    if n_seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {n_seeds}")
    if seeds_together not in (None, "auto", "on", "off"):
        raise ConfigError(f"seeds_together must be auto, on or off, got {seeds_together!r}")
    if jobs != "auto" and (not isinstance(jobs, int) or jobs < 1):
        raise ConfigError(f"--jobs must be >= 1 or auto, got {jobs}")
    from cifarlab.models.external import source_change

    params = check_models(spec)
    folder = Path(out) if out is not None else Path("runs") / spec.name
    problem = out_problem(folder)
    if problem:
        raise ConfigError(problem)
    tb = None
    if tensorboard is not None:
        from cifarlab.tensorboard_log import prepare

        tb = prepare(Path(tensorboard) / folder.resolve().name)
    folder.mkdir(parents=True, exist_ok=True)
    with FolderLock(folder), open_store(folder, storage, spec.name) as store:
        previous = store.meta()
        if previous.get("name") not in (None, spec.name):
            raise ConfigError(f"'{folder}' holds study '{previous['name']}', not '{spec.name}'; choose another --out")
        damaged: list[str] = []
        finished = {(r.experiment, r.seed): r for r in store.runs(damaged)}
        for problem in damaged:
            log(f"warning: {problem}; that run is trained again")
        for (name, seed), rec in finished.items():
            exp = next((e for e in spec.experiments if e.name == name), None)
            changed = source_change(rec.config, to_dict(exp.config)) if exp is not None else None
            if changed:
                raise ConfigError(f"experiment '{name}' seed {seed} in '{folder}' was trained before {changed}; "
                                  "use another --out, or put the file back as it was (results there were left "
                                  "untouched)")
            if exp is not None and comparable(to_dict(with_seed(exp.config, seed))) != comparable(rec.config):
                raise ConfigError(f"experiment '{name}' seed {seed} in '{folder}' was run with a different "
                                  f"configuration; use another --out (results there were left untouched)")
        store.set_meta(name=spec.name, description=spec.description, spec=spec.text, baseline=spec.baseline,
                       experiments=[e.name for e in spec.experiments],
                       descriptions={e.name: e.description for e in spec.experiments},
                       budget=to_dict(spec.budget),
                       val=max(e.config.data.val for e in spec.experiments), params=params)
        together = _together(spec, seeds_together or spec.seeds_together, storage, log)
        if storage is not None:
            from cifarlab.study_shared import run_shared

            return run_shared(spec, folder, storage, store, n_seeds, auto_jobs(len(spec.experiments) * n_seeds)
                              if jobs == "auto" else jobs, log, tb)
        left = [(exp, [seed for seed in range(n_seeds) if (exp.name, seed) not in finished])
                for exp in spec.experiments]
        runs = [(exp.name, seed, with_seed(exp.config, seed), folder) for exp, seeds_left in left
                for seed in seeds_left]
        # One task per process: an experiment's seeds together, or one seed.
        tasks = [(exp.name, group, exp.config, folder) for exp, seeds_left in left
                 for group in ([tuple(seeds_left)] if exp.name in together else [(s,) for s in seeds_left])
                 if group]
        if jobs == "auto":
            jobs = auto_jobs(len(tasks))
        total = len(spec.experiments) * n_seeds
        log(f"study '{spec.name}': {plural(total, 'run')} ({plural(len(spec.experiments), 'experiment')} x "
            f"{plural(n_seeds, 'seed')}), "
            f"{total - len(runs)} already finished, {len(runs)} to run -> {folder}"
            + (f" ({plural(min(jobs, len(tasks)), 'worker')}" if len(tasks) > 1 else "")
            + ("; each experiment's seeds together" if together and len(tasks) < len(runs) else "")
            + (")" if len(tasks) > 1 else ""))
        continued = _check_resumable(runs)
        _clear_stale(folder, keep=continued)
        started = time.perf_counter()
        for i, rec in enumerate(_execute(tasks, jobs, log, tb), start=1):
            store.record(rec)
            scores = " ".join(f"{part} {getattr(rec, f'{part}_acc'):.4f}" for part in ("val", "test", "train")
                              if getattr(rec, f"{part}_acc") is not None)
            diverged = f" DIVERGED at epoch {len(rec.history)} (non-finite loss)" if rec.diverged else ""
            log(f"[{i}/{len(runs)}] {rec.experiment} seed {rec.seed}: {scores}{diverged} ({rec.seconds:.1f}s)")
        if runs:
            log(f"done in {time.perf_counter() - started:.0f}s; report: cifarlab report {folder}")
        bad = diverged_runs(store)
        if bad:
            log(f"warning: {plural(len(bad), 'run')} diverged (non-finite loss): {', '.join(bad)}")
    return folder


def diverged_runs(store: Store) -> list[str]:
    """'experiment seed k' of every recorded run whose loss became NaN/inf."""
    return [f"{r.experiment} seed {r.seed}" for r in store.runs([]) if r.diverged]


def open_store(folder: Path, storage: str | None, name: str, create: bool = True):
    """The study's store: `folder/store.sqlite`, or study `name` in the database at `storage`."""
    if storage is None:
        return Store(folder, create=create)
    from cifarlab.store_pg import PgStore

    return PgStore(storage, name, create=create)


def _check_resumable(tasks: list[tuple[str, int, RunConfig, Path]]) -> set[Path]:
    """The stages of killed runs that the runs to do will continue from. A run stopped (`.incomplete`) with
    other settings than the spec's now is refused before anything trains, naming what differs; a killed
    run's stage of other settings is cleaned, as it always was."""
    from cifarlab.resume import choose
    from cifarlab.rundir import code_version
    from cifarlab.train import resolve_device

    continued = set()
    for name, seed, cfg, folder in tasks:
        try:
            found = choose(folder / run_dir_name(name, seed), {**to_dict(cfg), "version": code_version()},
                           resolve_device(cfg.train.device).type, resume=True, overwrite=True, insist=False,
                           fresh="use another --out (results there were left untouched)")
        except ConfigError as exc:
            raise ConfigError(f"experiment '{name}' seed {seed}: {exc}") from None
        if found is not None:
            continued.add(found.folder)
    return continued


def _clear_stale(folder: Path, keep: set[Path] = frozenset()) -> None:
    """Remove the staging folders that runs of a killed study left in its experiment folders.

    Only cifarlab's own (`.seed-K.cifarlab-<pid>-...`) whose process is gone: the folder lock keeps
    other studies out, and a live process's stage is never touched. Those in `keep` hold the
    checkpoints that their runs continue from.
    """
    for sub in sorted(folder.iterdir()):
        if sub.is_dir() and not sub.is_symlink():
            clear_stale_stages(sub, keep=lambda stage: stage in keep)


def _pool(jobs: int) -> ProcessPoolExecutor:
    """A pool of `jobs` spawned processes that die with the study and take a GPU each, round robin."""
    ctx = get_context("spawn")
    gpus = _gpu_count()
    devices = None
    if gpus > 1:  # one GPU per worker, round robin; with one GPU every worker shares it
        devices = ctx.Queue()
        for i in range(jobs):
            devices.put(f"cuda:{i % gpus}")
    return ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_start_worker,
                               initargs=(os.getpid(), devices))


def _execute(tasks: list[tuple[str, tuple[int, ...], RunConfig, Path]], jobs: int,
             log: Callable[[str], None] | None = None, tensorboard: Path | None = None):
    """Yield RunRecords as runs finish: in-process for one job (its epoch lines go to `log`), else a pool
    of spawned processes (silent until each task ends); a task is one seed or seeds trained together."""
    if jobs == 1 or len(tasks) <= 1:
        for task in tasks:
            yield from _run_seeds(*task, log=log, tensorboard=tensorboard)
        return
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with _pool(jobs) as pool:
        futures = [pool.submit(_run_seeds, *task, threads, None, tensorboard) for task in tasks]
        try:
            for future in as_finished(futures):
                yield from future.result()
        except BaseException:
            _stop(pool, futures)
            raise


def as_finished(futures):
    """concurrent.futures.as_completed without its untimed wait: SIGTERM may be delivered to one of the
    pool's threads, and a main thread blocked without a timeout runs its handler only once a run ends
    (seen: a study SIGTERMed right after SIGSTOP/SIGCONT let both workers train 15 more epochs)."""
    pending = set(futures)
    while pending:
        done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
        yield from done


def _stop(pool: ProcessPoolExecutor, futures, grace_seconds: float = 30.0) -> None:
    """Stop the workers now, as Ctrl-C would (each keeps its run's finished epochs), then for sure."""
    for f in futures:
        f.cancel()
    # ProcessPoolExecutor has no public way to reach its workers; without this, leaving the `with`
    # waits for every run in progress to finish.
    workers = [p for p in (getattr(pool, "_processes", None) or {}).values() if p.is_alive()]
    for p in workers:
        p.terminate()  # SIGTERM: a task raises signals.Terminated, an idle worker ignores it
    pool.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + grace_seconds
    for p in workers:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in workers:
        if p.is_alive():
            p.kill()
