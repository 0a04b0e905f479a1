"""Continuing a run from its last finished epoch: the per-epoch checkpoint, and where a run finds one.

While a run trains, its staging folder holds `checkpoint.pt`, rewritten (write, then rename) after
every epoch: weights, optimiser state, EMA weights, the random states (the run's generator, which
draws the data order and augmentation, and torch's global one, which dropout draws from), the
history rows so far and the run's config. Two things are rebuilt rather than stored, exactly: the
schedule (`StepPlan.replay`, from the epoch count and the losses a plateau schedule watched, which
are in the rows) and the alternating-flip bits (drawn from the seed before the first epoch). Everything is a tensor or a plain
container, so `torch.load(weights_only=True)` reads it and no object is ever unpickled. Its cost,
measured on the 2-core CPU machine (2026-12, batch 256, EMA on, 5,000-image epochs of 7-10 s): 610 KB
and 8-10 ms per epoch for s8-net and for budget-net (2 ms to copy the state, 6-8 ms to write it),
about 0.1% of an epoch.

A run continues from `<out>.incomplete` (Ctrl-C, SIGTERM) or from the staging folder of a run killed
outright (SIGKILL, power loss), once its process is gone; it must have been trained with the same
config (`config.comparable`), else the refusal names what differs. On CPU the continued run's history
is identical to an uninterrupted one (tests/test_resume.py).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cifarlab.config import comparable, setting_changes
from cifarlab.errors import ConfigError
from cifarlab.safety import is_run_folder, stale_stages

CHECKPOINT = "checkpoint.pt"
FORMAT = 1  # bumped when the layout changes; a checkpoint of another format is not continued
# key -> type of every entry (None: may be absent)
_LAYOUT = {"format": int, "epoch": int, "config": dict, "rows": list, "device": str, "train_seconds": float,
           "model": dict, "optimizer": dict, "ema": (dict, type(None)), "generator": torch.Tensor,
           "torch_rng": torch.Tensor, "cuda_rng": (torch.Tensor, type(None)), "lr_find": (dict, type(None))}


def state_of(epoch: int, rows: list[dict], model, opt, ema, gen: torch.Generator, device: torch.device,
             train_seconds: float, lr_find=None) -> dict[str, Any]:
    """Everything a run needs to go on after `epoch` exactly as if it had not stopped: a snapshot (copies on
    the CPU), so that it stays the state of `epoch` however long it is kept."""
    cpu = lambda sd: {k: v.detach().to("cpu", copy=True) if torch.is_tensor(v) else v  # noqa: E731
                      for k, v in sd.items()}
    opt_state = opt.state_dict()
    opt_state = {"state": {i: cpu(s) for i, s in opt_state["state"].items()},
                 "param_groups": [{k: float(v) if torch.is_tensor(v) else v for k, v in g.items()}
                                  for g in opt_state["param_groups"]]}  # a captured step's lr is a tensor
    return {"format": FORMAT, "epoch": epoch, "rows": [dict(r) for r in rows], "device": device.type,
            "train_seconds": float(train_seconds), "model": cpu(model.state_dict()), "optimizer": opt_state,
            "ema": cpu(ema.model.state_dict()) if ema is not None else None,
            "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "lr_find": dataclasses.asdict(lr_find) if lr_find is not None else None}


def restore(state: dict[str, Any], model, opt, ema, gen: torch.Generator, plan, device: torch.device) -> None:
    """Put a freshly built run (model, optimiser, EMA, generator, plan) where `state` left it; in place,
    so that a captured CUDA graph keeps its tensors. `plan` None: a schedule already replayed (seeds
    trained together share one); `opt` may be one seed's view of a stacked optimiser (stack.LaneOptimizer)."""
    model.load_state_dict(state["model"])
    if ema is not None:
        ema.model.load_state_dict(state["ema"])
    load_lane = getattr(opt, "load_lane_state", None)
    if load_lane is not None:
        load_lane(state["optimizer"])
    else:
        _load_optimizer(opt, state["optimizer"])
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if device.type == "cuda" and state["cuda_rng"] is not None:
        torch.cuda.set_rng_state(state["cuda_rng"], device)
    if plan is not None:
        plan.replay([r.get("val_loss", r["train_loss"]) for r in state["rows"]])


def _load_optimizer(opt: torch.optim.Optimizer, saved: dict) -> None:
    params = [p for g in opt.param_groups for p in g["params"]]
    if opt.state:  # a captured step holds these very tensors (TrainStep.restore zeroed them): copy into them
        for i, p in enumerate(params):
            for key, value in saved["state"].get(i, {}).items():
                opt.state[p][key].copy_(value)
        return
    # The hyperparameters stay the run's own (a step sets them anyway); only the state is loaded.
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    opt.load_state_dict(saved)
    for g, kept in zip(opt.param_groups, groups):
        g.update(kept)


def save(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a kill leaves the previous checkpoint or this one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load(path: Path) -> dict[str, Any]:
    """A checkpoint written by `save`; ConfigError (one line) when it is unreadable or not one."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, corrupt, not a torch file, forbidden object
        raise ConfigError(f"its checkpoint is unreadable ({exc.__class__.__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ConfigError("its checkpoint is not one this version of cifarlab writes")
    for key, kind in _LAYOUT.items():
        if not isinstance(state.get(key), kind):
            raise ConfigError(f"its checkpoint is damaged ('{key}')")
    if state["epoch"] < 1 or len(state["rows"]) != state["epoch"]:
        raise ConfigError("its checkpoint is damaged (epoch and history disagree)")
    return state


@dataclass
class Found:
    """A folder a run into `out` could continue from."""

    folder: Path  # `<out>.incomplete`, or the staging folder of a killed run
    state: dict[str, Any] | None  # None: no usable checkpoint (see `problem`)
    problem: str = ""

    @property
    def epoch(self) -> int:
        return self.state["epoch"] if self.state else 0

    def changes(self, config: dict[str, Any], device: str) -> list[str]:
        """What differs between this checkpoint's run and a run of `config` on `device` (empty: the same run)."""
        out = setting_changes(comparable(self.state["config"]), comparable(config))
        if self.state["device"] != device:  # a generator's state belongs to its kind of device
            out.append(f"device: {self.state['device']} -> {device}")
        return out


def find(out: Path) -> list[Found]:
    """`<out>.incomplete` when it is a cifarlab run, then the staging folders of killed runs into `out`
    that hold a readable checkpoint."""
    found = []
    incomplete = out.with_name(out.name + ".incomplete")
    if incomplete.is_dir() and not incomplete.is_symlink() and is_run_folder(incomplete):
        found.append(_read(incomplete))
    # A killed run's stage without a usable checkpoint is only cleaned away.
    return found + [f for f in map(_read, stale_stages(out.parent, out.name)) if f.state is not None]


def _read(folder: Path) -> Found:
    path = folder / CHECKPOINT
    if not path.is_file():
        return Found(folder, None, "it holds no checkpoint (written by an older cifarlab, or stopped before "
                                   "its first epoch ended)")
    try:
        return Found(folder, load(path))
    except ConfigError as exc:
        return Found(folder, None, str(exc))


def _listed(changes: list[str]) -> str:
    return "; ".join(changes[:3]) + (f" (and {len(changes) - 3} more)" if len(changes) > 3 else "")


def choose(out: str | os.PathLike, config: dict[str, Any], device: str, resume: bool, overwrite: bool,
           fresh: str = "pass --overwrite to start again", insist: bool = True) -> Found | None:
    """The checkpoint a run of `config` into `out` continues from, or None to start at epoch 1.

    resume: continue from the furthest matching checkpoint; `<out>.incomplete` of other settings is
    refused, naming what differs, and so, when the user asked to resume (`insist`), is anything else
    that cannot be continued; with nothing to continue the run starts afresh. Without resume, epochs
    that a plain start could lose are refused: `<out>.incomplete` with a checkpoint, and a killed run's
    matching checkpoint. A killed run's stage that is not continued is cleaned, as always (safety.py).
    overwrite alone: start afresh, whatever is there. `fresh`: how to start afresh, for the messages.
    """
    if overwrite and not resume:
        return None
    out = Path(out)
    found = find(out)
    epochs = config.get("train", {}).get("epochs")
    usable = [f for f in found if f.state is not None]
    same = [f for f in usable if not f.changes(config, device)]
    if resume:
        if same:
            return max(same, key=lambda f: f.epoch)  # `.incomplete` first: it wins a tie
        for f in usable:
            if insist or f.folder.name.endswith(".incomplete"):
                raise ConfigError(f"cannot resume from '{f.folder}': it was trained with other settings "
                                  f"({_listed(f.changes(config, device))}); run with those, or {fresh}")
        if found and insist:
            raise ConfigError(f"cannot resume from '{found[0].folder}': {found[0].problem}; {fresh}")
        return None
    for f in usable:
        changes = f.changes(config, device)
        if not changes:
            raise ConfigError(f"'{f.folder}' holds {f.epoch} of {epochs} epochs of this run: add --resume to "
                              f"continue it, or {fresh}")
        if f.folder.name.endswith(".incomplete"):
            raise ConfigError(f"'{f.folder}' holds {f.epoch} epochs of a run with other settings "
                              f"({_listed(changes)}): {fresh} (it is replaced), or choose another --out")
    return None
