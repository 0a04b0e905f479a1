"""Studies: a TOML spec -> experiments x seeds -> runs recorded in the study store, resumable.

Spec layout (see studies/*.toml): top-level `name`, `description`, `seeds`; tables `budget`
(max_params, max_epochs), `data`, `model`, `train` (with `train.optim`, `train.reg`) holding
defaults; and `[[experiments]]`, each with `name`, `description`, optional `baseline = true`,
and `model` / `data` / `train` tables that override the defaults key by key.
"""
from __future__ import annotations

import os
import shutil
import time
import tomllib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable

from cifarlab.config import RunConfig, from_dict, merge, to_dict, validate
from cifarlab.errors import CifarlabError, ConfigError
from cifarlab.optim import check_optim
from cifarlab.store import RunRecord, Store
from cifarlab.train import log_line

_TOP_KEYS = {"name", "description", "seeds", "budget", "data", "model", "train", "experiments"}
_EXPERIMENT_KEYS = {"name", "description", "baseline", "data", "model", "train"}
_BUDGET_KEYS = {"max_params", "max_epochs"}


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
    max_params: int | None
    max_epochs: int | None
    experiments: tuple[Experiment, ...]
    path: Path
    text: str

    @property
    def baseline(self) -> str | None:
        return next((e.name for e in self.experiments if e.baseline), None)


def _spec_error(path: Path, key: str, message: str) -> ConfigError:
    return ConfigError(f"{path}: {key}: {message}")


def _expect(value: Any, kind: type, path: Path, key: str) -> Any:
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok:
        raise _spec_error(path, key, f"expected {kind.__name__}, got {value!r}")
    return value


def load_spec(path: str | Path) -> StudySpec:
    """Parse and fully validate a study spec; every problem names the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study spec '{path}' does not exist")
    text = path.read_text()
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    for key in raw:
        if key not in _TOP_KEYS:
            raise _spec_error(path, key, f"unknown key (known: {', '.join(sorted(_TOP_KEYS))})")
    name = _expect(raw.get("name", path.stem), str, path, "name")
    seeds = _expect(raw.get("seeds", 1), int, path, "seeds")
    if seeds < 1:
        raise _spec_error(path, "seeds", f"must be >= 1, got {seeds}")
    budget = _expect(raw.get("budget", {}), dict, path, "budget")
    for key in budget:
        if key not in _BUDGET_KEYS:
            raise _spec_error(path, f"budget.{key}", f"unknown key (known: {', '.join(sorted(_BUDGET_KEYS))})")
    max_params = budget.get("max_params")
    max_epochs = budget.get("max_epochs")
    for key, value in (("max_params", max_params), ("max_epochs", max_epochs)):
        if value is not None and (_expect(value, int, path, f"budget.{key}") <= 0):
            raise _spec_error(path, f"budget.{key}", f"must be > 0, got {value}")

    defaults = {k: _expect(raw.get(k, {}), dict, path, k) for k in ("data", "model", "train")}
    experiments_raw = _expect(raw.get("experiments", []), list, path, "experiments")
    if not experiments_raw:
        raise _spec_error(path, "experiments", "the study lists no experiments")
    experiments: list[Experiment] = []
    for i, exp in enumerate(experiments_raw):
        where = f"experiments[{i}]"
        _expect(exp, dict, path, where)
        for key in exp:
            if key not in _EXPERIMENT_KEYS:
                raise _spec_error(path, f"{where}.{key}",
                                  f"unknown key (known: {', '.join(sorted(_EXPERIMENT_KEYS))})")
        if "name" not in exp:
            raise _spec_error(path, f"{where}.name", "missing")
        ename = _expect(exp["name"], str, path, f"{where}.name")
        if not ename or "/" in ename or ename.startswith("."):
            raise _spec_error(path, f"{where}.name", f"'{ename}' is not usable as a folder name")
        if any(e.name == ename for e in experiments):
            raise _spec_error(path, f"{where}.name", f"'{ename}' appears twice")
        where = f"experiments.{ename}"
        merged = {k: merge(defaults[k], _expect(exp.get(k, {}), dict, path, f"{where}.{k}"))
                  for k in ("data", "model", "train")}
        try:
            cfg = from_dict(RunConfig, {**merged, "max_params": max_params}, where)
            validate(cfg)
            check_optim(cfg.train.optim)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        if max_epochs is not None and cfg.train.epochs > max_epochs:
            raise _spec_error(path, f"{where}.train.epochs",
                              f"{cfg.train.epochs} epochs exceed the budget of {max_epochs}")
        experiments.append(Experiment(ename, str(exp.get("description", "")),
                                      _expect(exp.get("baseline", False), bool, path, f"{where}.baseline"), cfg))
    if sum(e.baseline for e in experiments) > 1:
        raise _spec_error(path, "experiments", "more than one experiment says baseline = true")
    return StudySpec(name, str(raw.get("description", "")), seeds, max_params, max_epochs,
                     tuple(experiments), path, text)


def check_models(spec: StudySpec) -> dict[str, int]:
    """Build every experiment's model once: unknown options and budget violations fail before training."""
    from cifarlab.models import check_budget, create_model

    params = {}
    for exp in spec.experiments:
        try:
            model = create_model(exp.config.model.name, **exp.config.model.options)
            params[exp.name] = check_budget(model, spec.max_params, f"experiment '{exp.name}' ({exp.config.model.name})")
        except CifarlabError as exc:
            raise type(exc)(f"{spec.path}: experiments.{exp.name}.model: {exc}") from None
    return params


def _with_seed(cfg: RunConfig, seed: int) -> RunConfig:
    return from_dict(RunConfig, merge(to_dict(cfg), {"train": {"seed": seed}}))


def _comparable(cfg: dict) -> dict:
    # A run recorded by an older cifarlab lacks the settings added since; read through the config
    # classes, those take their defaults (which reproduce the old behaviour), so adding an option
    # does not make every finished run look changed. Which GPU a run used does not matter either.
    try:
        cfg = to_dict(from_dict(RunConfig, cfg))
    except ConfigError:  # a setting this version no longer knows: compare as recorded
        pass
    return merge(cfg, {"train": {"device": None}})


def run_dir_name(experiment: str, seed: int) -> str:
    return f"{experiment}/seed-{seed}"


def _run_one(task: tuple[str, int, dict, str, int]) -> RunRecord:
    """Train one (experiment, seed) into its run folder; runs in a worker process when --jobs > 1."""
    import torch

    from cifarlab.experiment import run_experiment

    experiment, seed, cfg_dict, folder, threads = task
    if threads:
        torch.set_num_threads(threads)
    cfg = _on_worker_device(from_dict(RunConfig, cfg_dict))
    rel = run_dir_name(experiment, seed)
    history = run_experiment(cfg, Path(folder) / rel, overwrite=True, log=None)
    final, meta = history.final, history.meta
    return RunRecord(
        experiment=experiment, seed=seed, run_dir=rel, model=cfg.model.name, params=meta["params"],
        epochs=len(history.rows), test_acc=final["test_acc"], train_acc=final["train_acc"],
        test_acc_tta=final.get("test_acc_tta"), val_acc=final.get("val_acc"), seconds=meta["train_seconds"],
        warmup_seconds=meta["warmup_seconds"], device=meta["device"], config=to_dict(cfg), history=history.rows)


# The GPU a pool worker trains on, fixed once per process (see _execute): tying GPUs to workers,
# not to task numbers, keeps two runs from sharing one GPU while another idles.
_WORKER_DEVICE: str | None = None


def _init_worker(devices) -> None:
    global _WORKER_DEVICE
    _WORKER_DEVICE = devices.get()


def _on_worker_device(cfg: RunConfig) -> RunConfig:
    if _WORKER_DEVICE is None or cfg.train.device != "auto":
        return cfg
    return from_dict(RunConfig, merge(to_dict(cfg), {"train": {"device": _WORKER_DEVICE}}))


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run_study(spec: StudySpec, out: str | Path | None = None, seeds: int | None = None, jobs: int = 1,
              log: Callable[[str], None] = log_line) -> Path:
    """Run every (experiment, seed) not yet in the store; return the study folder."""
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    n_seeds = seeds if seeds is not None else spec.seeds
    if n_seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {n_seeds}")
    params = check_models(spec)
    folder = Path(out) if out is not None else Path("runs") / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    with Store(folder) as store:
        previous = store.meta()
        if previous.get("name") not in (None, spec.name):
            raise ConfigError(f"'{folder}' holds study '{previous['name']}', not '{spec.name}'; choose another --out")
        finished = {(r.experiment, r.seed): r for r in store.runs()}
        for (name, seed), rec in finished.items():
            exp = next((e for e in spec.experiments if e.name == name), None)
            if exp is not None and _comparable(to_dict(_with_seed(exp.config, seed))) != _comparable(rec.config):
                raise ConfigError(f"experiment '{name}' seed {seed} in '{folder}' was run with a different "
                                  f"configuration; use another --out (results there were left untouched)")
        store.set_meta(name=spec.name, description=spec.description, spec=spec.text, baseline=spec.baseline,
                       experiments=[e.name for e in spec.experiments],
                       descriptions={e.name: e.description for e in spec.experiments},
                       budget={"max_params": spec.max_params, "max_epochs": spec.max_epochs},
                       val=max(e.config.data.val for e in spec.experiments), params=params)
        tasks = []
        for exp in spec.experiments:
            for seed in range(n_seeds):
                if (exp.name, seed) in finished:
                    continue
                cfg = _with_seed(exp.config, seed)
                tasks.append((exp.name, seed, to_dict(cfg), str(folder)))
        total = len(spec.experiments) * n_seeds
        log(f"study '{spec.name}': {total} runs ({len(spec.experiments)} experiments x {n_seeds} seeds), "
            f"{total - len(tasks)} already finished, {len(tasks)} to run -> {folder}")
        _clear_stale(folder)
        started = time.perf_counter()
        for i, rec in enumerate(_execute(tasks, jobs), start=1):
            store.record(rec)
            log(f"[{i}/{len(tasks)}] {rec.experiment} seed {rec.seed}: "
                + (f"val {rec.val_acc:.4f} " if rec.val_acc is not None else "") + f"test {rec.test_acc:.4f} "
                f"train {rec.train_acc:.4f} ({rec.seconds:.1f}s)")
        if tasks:
            log(f"done in {time.perf_counter() - started:.0f}s; report: cifarlab report {folder}")
    return folder


def _clear_stale(folder: Path) -> None:
    """Remove staging folders of runs that were in progress when a previous invocation was killed."""
    for stage in folder.glob("*/.seed-*"):
        shutil.rmtree(stage, ignore_errors=True)


def _execute(tasks: list[tuple], jobs: int):
    """Yield RunRecords as runs finish: in-process for one job, else a pool of spawned processes."""
    if jobs == 1 or len(tasks) <= 1:
        for task in tasks:
            yield _run_one((*task, 0))
        return
    threads = max(1, (os.cpu_count() or 1) // jobs)
    ctx = get_context("spawn")
    gpus = _gpu_count()
    pool_args = {}
    if gpus > 1:  # one GPU per worker, round robin; with one GPU every worker shares it
        devices = ctx.Queue()
        for i in range(jobs):
            devices.put(f"cuda:{i % gpus}")
        pool_args = {"initializer": _init_worker, "initargs": (devices,)}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, **pool_args) as pool:
        futures = [pool.submit(_run_one, (*task, threads)) for task in tasks]
        try:
            for future in as_completed(futures):
                yield future.result()
        except BaseException:
            for f in futures:
                f.cancel()
            raise
