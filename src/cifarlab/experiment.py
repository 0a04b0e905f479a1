"""One experiment end to end: config -> data -> model -> train -> a complete run directory."""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
from torch import nn

from cifarlab import safety
from cifarlab.config import RunConfig, to_dict
from cifarlab.console import log_line
from cifarlab.data import CLASSES, DataSplits, load_cifar10, make_splits
from cifarlab.explain import save_explanations
from cifarlab.models import check_budget, check_output, count_params, model_from_config, resolve
from cifarlab.models.external import source_code
from cifarlab.resume import CHECKPOINT, Found, choose as resume_from, save as save_state
from cifarlab.rundir import RunDir, code_version, save_checkpoint, write_history, write_json
from cifarlab.train import History, Seed, resolve_device, seed_everything, train, train_seeds

SOURCE_COPY = "model_source.py"  # a run's copy of the file its model came from
LAYERS = "layers.json"  # the model's layer table as data: reports read it instead of rebuilding the model
Resume = Literal["no", "yes", "auto"]  # run_experiment(resume=...)


def layers_json(model: nn.Module) -> str | None:
    """The layer table (`cifarlab inspect --format json`), or None for a model the analysis cannot trace.

    Written at training time, when the model is at hand, so that a report never has to import a
    model file recorded in a study folder (opening a folder must not run its code).
    """
    from cifarlab.analysis import AnalysisError, format_table, layer_table

    try:
        return format_table(layer_table(model, (3, 32, 32)), "json") + "\n"
    except AnalysisError:
        return None


def build_model(cfg: RunConfig) -> nn.Module:
    """The model `cfg` names (registry, file or module), initialised from the run seed, then checked."""
    seed_everything(cfg.train.seed)
    model = model_from_config(cfg.model)
    check_model(model, cfg)
    return model


def check_model(model: nn.Module, cfg: RunConfig) -> None:
    """One probe batch must give (batch, 10) scores, and the model must fit the budget: before any folder."""
    check_output(model, f"model '{cfg.model.name}'", len(CLASSES))
    check_budget(model, cfg.max_params, cfg.model.name)


def prepare(cfg: RunConfig, model: nn.Module | None = None) -> tuple[RunConfig, nn.Module]:
    """`cfg` with its model resolved (a file model's path and sha256 go into config.json) after its device
    is checked, and the model to train: `model`, or the one `cfg` names; checked either way."""
    cfg = replace(cfg, model=resolve(cfg.model))
    resolve_device(cfg.train.device)
    if model is None:
        return cfg, build_model(cfg)
    check_model(model, cfg)
    return cfg, model


def load_data(cfg: RunConfig) -> DataSplits:
    """CIFAR-10 split as `cfg.data` says."""
    d = cfg.data
    return make_splits(load_cifar10(d.root, d.download), val=d.val, subset=d.subset, seed=d.split_seed)


def save_predictions(path: Path, logits: torch.Tensor, labels: torch.Tensor) -> None:
    """Test-set class probabilities (float16) and labels, for confusion matrices and error grids.

    `logits` are the run's own last test evaluation (`History.test_logits`: flip-TTA averaged with
    --tta, EMA weights with --ema, the run's precision), so the grids agree with the reported
    accuracy and the test set is not predicted a second time (~3.6 s per run on CPU).
    """
    probs = torch.softmax(logits.float().cpu(), 1).numpy().astype(np.float16)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, probs=probs, labels=labels.cpu().numpy().astype(np.int8))
    tmp.replace(path)


class StopRun(Exception):
    """Raised by an `on_epoch` callback to end a run early on purpose (a sweep pruning a trial).

    run_experiment keeps the epochs trained so far as a complete run folder (history, weights; meta
    `stopped` holds the reason) and re-raises, so the caller knows the run is partial.
    """


def run_experiment(cfg: RunConfig, out: str | Path, *, data: DataSplits | None = None, overwrite: bool = False,
                   log: Callable[[str], None] | None = log_line, model: nn.Module | None = None,
                   on_epoch: Callable[[dict], None] | None = None, resume: Resume = "no") -> History:
    """Train one run and write `out/{config.json, history.csv, history.json, model.pt, predictions.npz,
    layers.json, cams.npz}`, `model_source.py` when the model came from a file or module and
    `lr_find.{csv,png}` when its lr was "auto".

    Every check (config, model, budget, data) runs before the output folder is created; the config
    checked itself when it was made. `model`: train this object (already initialised) instead of building
    the one `cfg.model` names. `on_epoch(row)` sees each epoch's metrics once they are saved and may
    raise StopRun. Without a test split (`data.test` None) there is no predictions.npz.

    While it trains the staging folder holds a checkpoint of the last finished epoch (resume.py).
    `resume` "yes" (`cifarlab train --resume`): continue from `out.incomplete` or a killed run's staging
    folder when one holds a checkpoint of this config, refusing what cannot be continued; "auto" (a
    study, `cifarlab train` run again): the same, but what cannot be continued is started afresh, except
    an `.incomplete` of other settings; "no": start afresh (resume.choose says what that refuses).
    `overwrite` with "no" starts afresh whatever is there.
    """
    run = _check(cfg, out, overwrite, model, on_epoch, resume)
    if data is None:
        data = load_data(run.cfg)
    run.open(data, overwrite, log)
    try:
        history = train(run.model, data, run.cfg.train, log=log, on_epoch=run.saved, checkpoint=run.checkpoint,
                        resume=run.found.state if run.found else None)
    except StopRun as stop:
        write_history(run.rundir.stage, run.rows, {**run.meta, "stopped": str(stop)})
        save_checkpoint(run.rundir.stage / "model.pt", run.model, run.config, run.inputs)
        (run.rundir.stage / CHECKPOINT).unlink(missing_ok=True)
        run.rundir.commit()
        raise
    except BaseException:
        run.abandon(log)
        raise
    run.finish(history, data, log)
    return history


def run_experiments(cfgs: list[RunConfig], outs: list[Path], *, data: DataSplits | None = None,
                    logs: list[Callable[[str], None] | None], on_epochs: list[Callable[[dict], None] | None],
                    log: Callable[[str], None] | None = log_line) -> list[History]:
    """The runs of one experiment's seeds (configs that differ in `train.seed` alone), trained together
    (train.train_seeds), each into its own complete run folder as `run_experiment(..., overwrite=True,
    resume="auto")` writes it: a seed is done once its folder is, whatever the others still do.

    `logs[i]`, `on_epochs[i]`: run i's epoch lines and rows; `log`: lines about the batch (a fallback to one
    seed at a time). Interrupted, every run not yet done keeps its finished epochs, as run_experiment does.
    """
    runs = [_check(cfg, out, True, None, on_epoch, "auto") for cfg, out, on_epoch in zip(cfgs, outs, on_epochs)]
    if data is None:
        data = load_data(runs[0].cfg)
    histories: list[History | None] = [None] * len(runs)
    for run, run_log in zip(runs, logs):
        run.open(data, True, run_log)

    def done(i: int, history: History) -> None:
        runs[i].finish(history, data, logs[i])
        histories[i] = history

    # Seeds train together from one epoch: those resumed from later checkpoints form batches of their own.
    batches: dict[int, list[int]] = {}
    for i, run in enumerate(runs):
        batches.setdefault(run.found.epoch if run.found else 0, []).append(i)
    try:
        for batch in batches.values():
            train_seeds([Seed(runs[i].model, runs[i].cfg.train, logs[i], runs[i].saved, runs[i].checkpoint,
                              runs[i].found.state if runs[i].found else None, partial(done, i)) for i in batch],
                        data, log)
    except BaseException:
        for run, history, run_log in zip(runs, histories, logs):
            if history is None:
                run.abandon(run_log)
        raise
    return histories


@dataclass
class _Run:
    """A run between its checks and its complete folder (the phases run_experiment goes through)."""

    cfg: RunConfig
    model: nn.Module
    out: Path
    config: dict
    found: Found | None
    code: bytes | None
    layers: str | None
    on_epoch: Callable[[dict], None] | None
    started: float
    rundir: RunDir | None = None
    inputs: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)  # the epochs saved so far

    def open(self, data: DataSplits, overwrite: bool, log) -> None:
        """The staging folder (adopting the checkpoint's, when resumed) with the run's config in it."""
        self.rundir = RunDir(self.out, overwrite=overwrite, adopt=self.found.folder if self.found else None)
        if self.found is not None and log is not None:
            log(f"resuming after epoch {self.found.epoch} of {self.cfg.train.epochs} from '{self.found.folder}'")
        stage = self.rundir.stage
        write_json(stage / "config.json", self.config)
        if self.code is not None:
            (stage / SOURCE_COPY).write_bytes(self.code)
        if self.layers is not None:
            (stage / LAYERS).write_text(self.layers)
        # The inputs the weights expect, also kept in model.pt.
        self.inputs = {"classes": list(data.classes), "mean": list(data.mean), "std": list(data.std)}
        self.meta = {"params": count_params(self.model), "non_trainable_params": count_params(self.model, trainable=False),
                     **self.inputs}
        self.rows = list(self.found.state["rows"]) if self.found is not None else []
        # What a run costs besides training (model, data, and afterwards the files and Grad-CAM): in a study
        # on a GPU it was most of each run's wall time (BENCHMARKS.md, "second window").
        self.meta["setup_seconds"] = time.perf_counter() - self.started

    def saved(self, row: dict) -> None:
        self.rows.append(row)
        write_history(self.rundir.stage, self.rows, self.meta)
        if self.on_epoch is not None:
            self.on_epoch(row)

    def checkpoint(self, state: dict) -> None:
        save_state(self.rundir.stage / CHECKPOINT, {**state, "config": self.config})

    def abandon(self, log) -> None:
        kept = self.rundir.abandon()
        if kept is not None and log is not None:
            log(f"interrupted: the {len(self.rows)} finished epoch(s) are kept in {kept}; the same command "
                "continues from there")

    def finish(self, history: History, data: DataSplits, log) -> None:
        """Weights, predictions, Grad-CAM and the final history into the stage, then into place."""
        finished = time.perf_counter()
        stage = self.rundir.stage
        save_checkpoint(stage / "model.pt", self.model, self.config, self.inputs)
        if data.test is not None:  # a sweep trial has no test split
            save_predictions(stage / "predictions.npz", history.test_logits, data.test.y)
        save_explanations(stage, self.model, data, history, self.layers, log)
        history.meta = {**self.meta, **history.meta, "save_seconds": time.perf_counter() - finished}
        write_history(stage, history.rows, history.meta)
        (stage / CHECKPOINT).unlink(missing_ok=True)  # a finished run has model.pt; nothing to continue
        self.rundir.commit()
        if self.rundir.overwrite and self.found is None:  # started afresh: an interrupted run into `out` is replaced
            self.rundir.drop_incomplete()


def _check(cfg: RunConfig, out: str | Path, overwrite: bool, model: nn.Module | None, on_epoch,
           resume: Resume) -> _Run:
    """Everything that can refuse a run, before any folder exists: config, device, model, budget, its file,
    the output folder and what may be continued there."""
    started = time.perf_counter()
    cfg, model = prepare(cfg, model)
    device = resolve_device(cfg.train.device)
    code = source_code(cfg.model.source)  # read before the folder exists: a file that changed fails cleanly
    layers = layers_json(model)
    safety.check_output(out, overwrite)  # a refused folder, before the data load (which can take a while)
    config = {**to_dict(cfg), "version": code_version()}
    found = resume_from(out, config, device.type, resume=resume != "no", overwrite=overwrite, insist=resume == "yes")
    return _Run(cfg, model, Path(out), config, found, code, layers, on_epoch, started)
