"""One experiment end to end: config -> data -> model -> train -> a complete run directory."""
from __future__ import annotations

import time
from dataclasses import replace
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
from cifarlab.resume import CHECKPOINT, choose as resume_from, save as save_state
from cifarlab.rundir import RunDir, code_version, save_checkpoint, write_history, write_json
from cifarlab.train import History, resolve_device, seed_everything, train

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
    started = time.perf_counter()
    cfg, model = prepare(cfg, model)
    device = resolve_device(cfg.train.device)
    code = source_code(cfg.model.source)  # read before the folder exists: a file that changed fails cleanly
    layers = layers_json(model)
    safety.check_output(out, overwrite)  # a refused folder, before the data load (which can take a while)
    config = {**to_dict(cfg), "version": code_version()}
    found = resume_from(out, config, device.type, resume=resume != "no", overwrite=overwrite, insist=resume == "yes")
    if data is None:
        data = load_data(cfg)
    rundir = RunDir(out, overwrite=overwrite, adopt=found.folder if found else None)
    if found is not None and log is not None:
        log(f"resuming after epoch {found.epoch} of {cfg.train.epochs} from '{found.folder}'")
    write_json(rundir.stage / "config.json", config)
    if code is not None:
        (rundir.stage / SOURCE_COPY).write_bytes(code)
    if layers is not None:
        (rundir.stage / LAYERS).write_text(layers)
    inputs = {"classes": list(data.classes), "mean": list(data.mean), "std": list(data.std)}  # also kept in model.pt
    meta = {"params": count_params(model), "non_trainable_params": count_params(model, trainable=False), **inputs}
    rows: list[dict] = list(found.state["rows"]) if found is not None else []  # the epochs saved so far
    # What a run costs besides training (model, data, and afterwards the files and Grad-CAM): in a study
    # on a GPU it was most of each run's wall time (BENCHMARKS.md, "second window").
    meta["setup_seconds"] = time.perf_counter() - started

    def saved(row: dict) -> None:
        rows.append(row)
        write_history(rundir.stage, rows, meta)
        if on_epoch is not None:
            on_epoch(row)

    try:
        history = train(model, data, cfg.train, log=log, on_epoch=saved, resume=found.state if found else None,
                        checkpoint=lambda state: save_state(rundir.stage / CHECKPOINT, {**state, "config": config}))
    except StopRun as stop:
        write_history(rundir.stage, rows, {**meta, "stopped": str(stop)})
        save_checkpoint(rundir.stage / "model.pt", model, config, inputs)
        (rundir.stage / CHECKPOINT).unlink(missing_ok=True)
        rundir.commit()
        raise
    except BaseException:
        kept = rundir.abandon()
        if kept is not None and log is not None:
            log(f"interrupted: the {len(rows)} finished epoch(s) are kept in {kept}; the same command continues "
                "from there")
        raise
    finished = time.perf_counter()
    save_checkpoint(rundir.stage / "model.pt", model, config, inputs)
    if data.test is not None:  # a sweep trial has no test split
        save_predictions(rundir.stage / "predictions.npz", history.test_logits, data.test.y)
    save_explanations(rundir.stage, model, data, history, layers, log)
    history.meta = {**meta, **history.meta, "save_seconds": time.perf_counter() - finished}
    write_history(rundir.stage, history.rows, history.meta)
    (rundir.stage / CHECKPOINT).unlink(missing_ok=True)  # a finished run has model.pt; nothing to continue
    rundir.commit()
    if overwrite and found is None:  # started afresh: an interrupted run into `out` is replaced too
        rundir.drop_incomplete()
    return history
