"""The one training loop: `train(model, data, cfg) -> History`.

Hot loop rules: the data already sits on the training device; each epoch's augmentation is drawn
up front and applied in large chunks there; one `TrainStep` (step.py) does forward, backward,
update, EMA and metric sums on the device, replayed as one CUDA graph when `cuda_graph` is on; the
metrics are read once per epoch (no host sync inside an epoch on CUDA). The CPU path runs the same
code, uncaptured.
"""
from __future__ import annotations

import copy
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch import nn

from cifarlab.config import TrainConfig
from cifarlab.console import log_line
from cifarlab.data import DataSplits, Split, alternating_flips, augment, draw_augment
from cifarlab.errors import ConfigError
from cifarlab.malloc import keep_freed_memory
from cifarlab.metrics import LOGGED
from cifarlab.optim import create_optimizer, penalty_terms
from cifarlab.stack import LaneOptimizer, Stack, detach, unstackable
from cifarlab.step import StepPlan, TrainStep

if TYPE_CHECKING:
    from cifarlab.lrfind import RangeTest


@dataclass
class History:
    """Per-epoch metrics plus run-level facts (device, parameter count, timings)."""

    rows: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    # (N, classes) float32 on the CPU: the test-set logits of the last evaluation (flip-TTA averaged
    # when `tta` is on), i.e. of the weights the run ends with; predictions.npz is written from them.
    test_logits: torch.Tensor | None = None
    lr_find: "RangeTest | None" = None  # with lr "auto": the range test's curve (lr_find.csv in a run folder)

    @property
    def final(self) -> dict:
        return self.rows[-1] if self.rows else {}


DATA_INIT_IMAGES = 2000  # training images a model's data-dependent init sees (always the same ones)

# --compile value -> torch.compile mode (None = eager). reduce-overhead adds CUDA graphs.
COMPILE_MODES = {"off": None, "on": "default", "reduce-overhead": "reduce-overhead", "max-autotune": "max-autotune"}
# With the whole step captured (cuda_graph on) inductor must not make CUDA graphs of its own: they
# cannot be recorded inside another capture. reduce-overhead is then plain "on".
GRAPHED_COMPILE_MODES = {"reduce-overhead": "default", "max-autotune": "max-autotune-no-cudagraphs"}

# Images augmented per chunk on CUDA: 8,192 (16 batches of 512) keeps the temporaries near 0.4 GB
# and makes 7 chunks of ~6 kernels per epoch instead of 97 batches of ~6 launches at ~10 us of host
# time each. On CPU one batch at a time, as before: no launch cost there, and the batch stays in cache.
AUGMENT_CHUNK_IMAGES = 8192


def resolve_device(name: str) -> torch.device:
    """'auto' -> $CIFARLAB_DEVICE if set (a study worker's GPU), else cuda when available, else cpu;
    anything else must be usable here."""
    if name == "auto":
        name = os.environ.get("CIFARLAB_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device '{name}'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' asked for, but CUDA is not available here")
    return device


def init_from_data(model: nn.Module, train: Split) -> None:
    """The model's data-dependent init, if it has one (budget-net's whitening stem), on DATA_INIT_IMAGES
    training images; evenly strided, so a class-ordered training set still gives every class its share."""
    init = getattr(model, "init_from_data", None)
    if init is not None:
        init(train.x[:: max(1, len(train) // DATA_INIT_IMAGES)][:DATA_INIT_IMAGES])


def seed_everything(seed: int) -> None:
    """Seed torch's CPU and CUDA generators (model init, dropout)."""
    torch.manual_seed(seed)


def autocast_for(device: torch.device, precision: str):
    """A no-argument factory of the autocast context the run uses (bf16 on CUDA by default)."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    # No cast cache: it only saves re-casting a weight used twice in one forward (these nets use each
    # once), and a cast cached outside a CUDA-graph capture must not be reused inside it.
    return (lambda: torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)) if use_bf16 \
        else nullcontext


def _translate(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Shift images by (dy, dx) <= 1 pixel, filling the edge by reflection (as the training crop does)."""
    if dy == 0 and dx == 0:
        return x
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    return padded[..., 1 - dy: 1 - dy + h, 1 - dx: 1 - dx + w]


# Test-time augmentation: the views whose logits are averaged, as (dy, dx, mirrored).
# "flip" is the headline TTA; "flip-shift" (6 views: flip x {none, 1 px down-right, 1 px up-left})
# is reported in a column of its own at the final epoch.
TTA_VIEWS: dict[str, tuple[tuple[int, int, bool], ...]] = {
    "none": ((0, 0, False),),
    "flip": ((0, 0, False), (0, 0, True)),
    "flip-shift": tuple((dy, dx, m) for dy, dx in ((0, 0), (1, 1), (-1, -1)) for m in (False, True)),
}


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int, tta: bool | str = False,
            autocast: Callable = nullcontext, memory_format: torch.memory_format | None = None) -> torch.Tensor:
    """Logits (N, classes) in float32, averaged over the TTA views (`True` means "flip").

    `memory_format`: the layout the model's inputs take (None: as given; training on CUDA passes the
    run's, channels_last unless the model cannot take it)."""
    views = TTA_VIEWS["flip" if tta is True else (tta or "none")]
    was_training = model.training
    model.eval()
    outs = []
    for i in range(0, x.shape[0], batch_size):
        xb = x[i: i + batch_size]
        out = 0
        for dy, dx, mirrored in views:
            xv = _translate(xb.flip(3) if mirrored else xb, dy, dx)
            if memory_format is not None:
                xv = xv.contiguous(memory_format=memory_format)
            with autocast():
                out = out + model(xv).float()
        outs.append(out / len(views))
    model.train(was_training)
    return torch.cat(outs)


def _evaluate(model, split: Split, cfg: TrainConfig, autocast, fmt, tta: bool,
              rich_tta: bool = False) -> tuple[dict, torch.Tensor]:
    """Device-tensor metrics of `split`, and its logits (flip-TTA averaged when `tta`): no host sync."""
    logits = predict(model, split.x, cfg.eval_batch_size, False, autocast, fmt)
    out = {"loss": F.cross_entropy(logits, split.y), "acc": (logits.argmax(1) == split.y).float().mean()}
    kept = logits
    for key, kind, wanted in (("acc_tta", "flip", tta), ("acc_tta6", "flip-shift", rich_tta)):
        if wanted:
            view_logits = predict(model, split.x, cfg.eval_batch_size, kind, autocast, fmt)
            out[key] = (view_logits.argmax(1) == split.y).float().mean()
            if kind == "flip":
                kept = view_logits
    return out, kept


class _EMA:
    """Exponential moving average of the weights (buffers copied), for evaluation.

    Not torch.optim.swa_utils.AveragedModel + get_ema_multi_avg_fn (issue 12), which differs in three
    ways: its first update copies the weights where this one already averages them with the initial
    ones (so histories would move); it reads its `n_averaged` counter on the host twice per update
    (`bool(n_averaged == 0)`, `if n_averaged > 0`), a sync per step that also makes CUDA-graph capture
    of the step fail; and it copies buffers one tensor at a time. The update here is two foreach
    kernels and lives inside the captured step.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).eval()
        self.decay = decay
        self.src = list(model.parameters())
        self.dst = list(self.model.parameters())
        # Buffers (norm running statistics, counters) are copied, not averaged: one foreach call.
        self.buf_dst, self.buf_src = list(self.model.buffers()), list(model.buffers())

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        torch._foreach_lerp_(self.dst, self.src, 1.0 - self.decay)
        if self.buf_dst:
            torch._foreach_copy_(self.buf_dst, self.buf_src)


def _epoch_line(row: dict, epochs: int, eta: float | None) -> str:
    parts = [f"Epoch {row['epoch']}/{epochs}", f"{row['seconds']:.1f}s"]
    parts += [f"{m.label} {row[m.name]:{m.fmt}}" for m in LOGGED if m.name in row]
    if eta is not None and row["epoch"] < epochs:
        parts.append(f"~{int(eta // 60)}m{int(eta % 60):02d}s left")
    return " - ".join(parts)


def _progress(total: int, desc: str):
    from tqdm import tqdm

    # Silent when stderr is not a terminal (CI, logs, studies running in the background).
    return tqdm(total=total, desc=desc, leave=False, unit="batch", dynamic_ncols=True,
                disable=not sys.stderr.isatty() or os.environ.get("CIFARLAB_NO_PROGRESS") == "1")


@dataclass
class Seed:
    """One run of `train_seeds`: its model and config, and the callbacks `train` takes for it.

    `on_done(history)` is called as soon as this run has ended (its last epoch, or the epoch its loss
    diverged), before the other seeds of the batch have, so that its folder can be completed at once.
    """

    model: nn.Module
    cfg: TrainConfig
    log: Callable[[str], None] | None = log_line
    on_epoch: Callable[[dict], None] | None = None
    checkpoint: Callable[[dict], None] | None = None
    resume: dict | None = None
    on_done: Callable[[History], None] | None = None


def together_problem(cfg: TrainConfig) -> str | None:
    """Why runs with these settings cannot train their seeds as one computation, or None.

    Only what would couple or split the seeds: one stacked optimiser steps every seed at one learning
    rate, so a learning rate each seed finds or adapts for itself cannot be shared."""
    if cfg.optim.lr == "auto":
        return "lr auto runs a range test per seed, which may choose a different learning rate for each"
    if cfg.optim.schedule == "plateau":
        return "the plateau schedule lowers each seed's learning rate after its own loss"
    if cfg.compile not in ("auto", "off"):
        return f"--compile {cfg.compile} is not combined with seeds together"
    return None


def train(model: nn.Module, data: DataSplits, cfg: TrainConfig, *,
          log: Callable[[str], None] | None = log_line,
          on_epoch: Callable[[dict], None] | None = None,
          checkpoint: Callable[[dict], None] | None = None, resume: dict | None = None) -> History:
    """Train `model` on `data` as `cfg` says; return the per-epoch history.

    `on_epoch(row)` is called after every epoch so a caller can persist progress as it goes;
    `checkpoint(state)` before it, with everything needed to go on from there (resume.state_of).
    `resume`: such a state; training continues after its epoch as if it had never stopped.
    The model is left trained in place (with EMA weights copied in when `cfg.ema` is set).
    """
    return _train([Seed(model, cfg, log, on_epoch, checkpoint, resume)], data, log)[0]


def train_seeds(seeds: list[Seed], data: DataSplits, log: Callable[[str], None] | None = log_line) -> list[History]:
    """Train runs whose configs differ in the seed alone together, in one process: with CUDA their
    captured steps side by side on K streams, elsewhere as one batched computation (stack.py).

    Each seed is still its own run: its own initialisation (the model given), data order,
    augmentation, norm statistics, EMA, checkpoints and history, the same as `train` gives it to
    float tolerance (dropout masks aside: the seeds draw them from one generator). The seeds must be
    at the same epoch (all fresh, or resumed from checkpoints of one epoch). When they cannot train
    together (`together_problem`, or a forward vmap cannot batch) they train one at a time, and `log`
    says why in one line.
    """
    epochs = {s.resume["epoch"] if s.resume is not None else 0 for s in seeds}
    if len(epochs) > 1:
        raise ValueError(f"seeds trained together must start at one epoch, got {sorted(epochs)}")
    problem = together_problem(seeds[0].cfg) if len(seeds) > 1 else None
    if problem is not None:
        _fallback(log, len(seeds), problem)
        return [_train([s], data, log)[0] for s in seeds]
    return _train(seeds, data, log)


def _fallback(log, n: int, problem: str) -> None:
    if log is not None:
        log(f"seeds together: off ({problem}); the {n} seeds train one at a time")


@dataclass
class _EMAView:
    """One seed's slice of a stacked EMA copy, shaped as `_EMA` is for resume.state_of/restore."""

    model: nn.Module


@dataclass
class _Lane:
    """What a seed carries through the loop besides its model: its randomness, history and state views."""

    seed: Seed
    gen: torch.Generator
    flip_bits: torch.Tensor | None
    ema: "_EMA | _EMAView | None"
    opt: "torch.optim.Optimizer | LaneOptimizer"
    history: History
    eval_model: Callable
    step: TrainStep  # its own, or the stacked one shared by every seed (then `slot` is its index there)
    slot: int | None = None
    done: int = 0  # epochs trained before this process took the run on
    before: float = 0.0  # their training seconds
    live: bool = True
    order: torch.Tensor | None = None
    draws: object = None


def _train(seeds: list[Seed], data: DataSplits, log) -> list[History]:
    """The one loop, over one seed or several trained together.

    Several seeds train as one of two designs (bench/seeds_micro.py measured both against one seed's step
    K times): with CUDA, each seed keeps its own TrainStep, captured as its own CUDA graph, and the K graphs
    replay on K CUDA streams, so that kernels which each fill a small part of the GPU run side by side
    (K=5 on an H200: 1.3-1.9x the throughput of one after another); elsewhere one TrainStep over the
    stacked seeds (stack.py), which is the batched computation on a CPU too (on the H200 it ran at
    0.6-0.7x: vmap's layout copies and unbatched fallbacks cost more than its grouped kernels save).
    """
    cfg = seeds[0].cfg  # every seed's config but for the seed itself
    models = [s.model for s in seeds]
    device = resolve_device(cfg.device)
    use_cuda = device.type == "cuda"
    graph = cfg.cuda_graph == "on" or (cfg.cuda_graph == "auto" and use_cuda)
    streams = use_cuda and len(seeds) > 1  # K steps on K streams: each seed's own computation
    stacked = len(seeds) > 1 and not streams
    fmt = None
    if use_cuda:
        torch.backends.cudnn.benchmark = True
        if device.index is not None:
            torch.cuda.set_device(device)  # so synchronize(), caches and compiled kernels use this GPU
        # Stacked weights are one (K, ...) tensor whose slices the seeds' own layers view: NCHW.
        fmt = None if stacked else _memory_format(models[0], data.train.x[:2])
        models = [m.to(device) if fmt is None else m.to(device, memory_format=fmt) for m in models]
    else:
        keep_freed_memory()
        models = [m.to(device) for m in models]
    data = data.to(device)
    autocast = autocast_for(device, cfg.precision)
    if stacked:
        problem = unstackable(models, data.train.x[:4], data.train.y[:4], autocast)
        if problem is not None:
            _fallback(log, len(seeds), f"the model's forward cannot be batched over seeds: {problem}")
            return [_train([replace(s, model=m)], data, log)[0] for s, m in zip(seeds, models)]
    for model in models:
        init_from_data(model, data.train)  # before warm-up saves the weights
    lr_find = None
    if cfg.optim.lr == "auto":  # the range test on the training split, then train at its suggestion (one seed)
        from cifarlab.lrfind import RangeTest, auto_lr

        resume = seeds[0].resume
        if resume is not None and resume["lr_find"] is not None:  # the test the run began with, not a second one
            lr_find = RangeTest(**resume["lr_find"])
        else:
            lr_find = auto_lr(models[0], data.train, cfg, device, autocast, fmt, seeds[0].log)
        cfg = replace(cfg, optim=replace(cfg.optim, lr=lr_find.suggestion))
    mode = COMPILE_MODES["off" if cfg.compile == "auto" else cfg.compile]
    if graph:
        mode = GRAPHED_COMPILE_MODES.get(mode, mode)
    compiled = mode is not None
    if compiled:
        # Dynamo keeps at most 8 compiled variants per forward() code object across models; runs of a
        # study in one process would exhaust that after ~4 configurations and silently fall back to
        # eager. A reset per run recompiles (from inductor's on-disk cache when the model repeats).
        torch.compiler.reset()
    n = len(data.train)
    bs = min(cfg.batch_size, n)
    steps = n // bs  # drop the ragged last batch: one batch shape, no tiny noisy BN batch

    def make_step(core: nn.Module, net: Callable, k: int = 0) -> TrainStep:
        opt = create_optimizer(core, cfg.optim, device)
        # The EMA copy exists before any warm-up step: a captured step holds its tensors.
        ema = _EMA(core, cfg.ema) if cfg.ema else None
        return TrainStep(core, net, opt, ema, penalty_terms(core, cfg.reg), cfg.reg.label_smoothing, autocast,
                         steps, device, seeds=k)

    if stacked:
        stack = Stack(models)  # from here on the seeds' tensors are views of the stacked ones
        all_steps = [make_step(stack.module, stack.net, len(seeds))]
    else:
        all_steps = [make_step(m, torch.compile(m, mode=mode) if compiled else m) for m in models]
    # The schedule is the same for every seed: one plan (from the first optimiser's groups) serves all.
    plan = StepPlan(all_steps[0].opt, cfg.optim, cfg.epochs, steps)

    warmup_seconds = 0.0
    if compiled or use_cuda or graph:
        for step in all_steps:
            compiled_here, seconds = _prepare(step, data, cfg, bs, autocast, fmt, compiled, graph, plan, log,
                                              models[0] if stacked else None)
            warmup_seconds += seconds
        compiled = compiled_here
    seed_everything(cfg.seed)  # dropout's generator; seeds together draw their masks from the first seed's
    meta = {"device": _device_name(device), "train_images": n, "batch_size": bs, "steps_per_epoch": steps,
            "compiled": compiled, "cuda_graph": all(st.graph is not None for st in all_steps),
            "warmup_seconds": warmup_seconds}
    if len(seeds) > 1:
        meta["seeds_together"] = len(seeds)
    lanes = []
    for k, s in enumerate(seeds):
        gen = torch.Generator(device=device)
        gen.manual_seed(s.cfg.seed)
        flip_bits = torch.rand(n, device=device, generator=gen) < 0.5 if cfg.alt_flip else None
        if stacked:
            step, slot = all_steps[0], k
            lane_ema = None if step.ema is None else _EMAView(stack.lane_ema(step.ema.model, models[k], k))
            lane_opt, eval_model = LaneOptimizer(step.opt, k), models[k]
        else:
            step, slot = all_steps[k], None
            lane_ema, lane_opt, eval_model = step.ema, step.opt, step.net
        lane = _Lane(s, gen, flip_bits, lane_ema, lane_opt, History(meta=dict(meta), lr_find=lr_find),
                     lane_ema.model if lane_ema is not None else eval_model, step, slot)
        if lr_find is not None:  # config.json keeps "auto"; the lr used, and how it was found, go here
            lane.history.meta["lr_auto"] = lr_find.summary()
        if s.resume is not None:
            from cifarlab import resume as checkpoints

            # The schedule is shared: replayed once, with the first seed.
            checkpoints.restore(s.resume, models[k], lane_opt, lane_ema, gen, plan if k == 0 else None, device)
            lane.history.rows = [dict(r) for r in s.resume["rows"]]
            lane.done, lane.before = s.resume["epoch"], s.resume["train_seconds"]
            lane.history.meta["resumed_after_epoch"] = lane.done
            if lane.history.rows[-1].get("diverged"):
                lane.history.meta["diverged_at_epoch"] = lane.done
                lane.live = False  # it stopped there, and stays stopped
        lanes.append(lane)
    chunk = max(1, AUGMENT_CHUNK_IMAGES // bs) if use_cuda else 1  # batches augmented at once
    run_start = time.perf_counter()

    def finish(lane: _Lane) -> None:
        h, model = lane.history, lane.seed.model
        if stacked:
            detach(model)  # its weights stay as they are now, whatever the other seeds still do
        if h.test_logits is None and data.test is not None and lane.seed.resume is not None:
            # Resumed after its last epoch (killed before the folder was complete): its test logits again.
            h.test_logits = _evaluate(lane.eval_model, data.test, cfg, autocast, fmt, cfg.tta)[1]
        if lane.ema is not None:
            model.load_state_dict(lane.ema.model.state_dict())
        if h.test_logits is not None:
            h.test_logits = h.test_logits.cpu()
        loop_seconds = sum(r["train_seconds"] for r in h.rows)
        # images/s counts the training loop only (augmentation, forward, backward, step), not evaluation.
        h.meta.update(train_seconds=lane.before + time.perf_counter() - run_start,
                      images_per_second=steps * bs * len(h.rows) / max(loop_seconds, 1e-9))
        lane.live = False
        if lane.seed.on_done is not None:
            lane.seed.on_done(h)

    show_loss = not use_cuda  # reading the loss costs a host sync: only worth it on CPU
    lane_streams = [torch.cuda.Stream(device) for _ in lanes] if streams else []
    for epoch in range(min(lane.done for lane in lanes) + 1, cfg.epochs + 1):
        if not any(lane.live for lane in lanes):
            break
        t0 = time.perf_counter()
        rows = plan.rows(epoch)
        for step in all_steps:
            step.model.train()
            step.start_epoch(rows)
        for lane in lanes:
            # The epoch's randomness, in the order per-batch augmentation drew it: the order, the flips
            # (alternating: no draws), then per batch the crop offsets and the flip mask.
            lane.order = torch.randperm(n, device=device, generator=lane.gen)[: steps * bs]
            flips = alternating_flips(lane.flip_bits, lane.order, epoch) if lane.flip_bits is not None else None
            lane.draws = draw_augment(cfg.augment, steps, bs, lane.gen, device, flips)
        with _progress(steps, f"epoch {epoch}/{cfg.epochs}") as bar:
            for first in range(0, steps, chunk):
                part = slice(first * bs, min(steps, first + chunk) * bs)
                xs = [augment(data.train.x[lane.order[part]], lane.draws[part]) for lane in lanes]  # (chunk * bs, 3, 32, 32)
                ys = [data.train.y[lane.order[part]] for lane in lanes]
                if stacked:  # (seeds, chunk * bs, ...)
                    xs, ys = [torch.stack(xs)], [torch.stack(ys)]
                elif fmt is not None:
                    xs = [x.contiguous(memory_format=fmt) for x in xs]
                here = torch.cuda.current_stream(device) if streams else None
                for x, y, stream in zip(xs, ys, lane_streams):
                    stream.wait_stream(here)  # this chunk's augmentation and the epoch's lr table first
                    x.record_stream(stream)  # not reused for the next chunk while the stream reads it
                    y.record_stream(stream)
                for i in range(first, first + ys[0].shape[-1] // bs):
                    k = (i - first) * bs
                    if streams:
                        for lane, x, y, stream in zip(lanes, xs, ys, lane_streams):
                            with torch.cuda.stream(stream):
                                lane.step.run(x.narrow(0, k, bs), y.narrow(0, k, bs), i)
                    else:
                        all_steps[0].run(xs[0].narrow(-4, k, bs), ys[0].narrow(-1, k, bs), i)
                    bar.update(1)
                    if show_loss and not bar.disable and i % 20 == 0:
                        bar.set_postfix(loss=f"{all_steps[0].loss.mean().item():.3f}")
        if not plan.monitors and epoch < cfg.epochs:
            plan.rows(epoch + 1)  # the next epoch's schedule, on the host while the device works
        if use_cuda:
            torch.cuda.synchronize(device)  # the one wait of the epoch, to time the loop apart from evaluation
        loop_seconds = time.perf_counter() - t0
        for k, lane in enumerate(lanes):
            if not lane.live:
                continue
            t1 = time.perf_counter()
            st = lane.step
            sums = (st.loss_sum, st.correct) if lane.slot is None else (st.loss_sum[lane.slot], st.correct[lane.slot])
            row, lane.history.test_logits = _epoch_row(epoch, *sums, steps * bs, rows[0][0]["lr"], lane.eval_model,
                                                       data, cfg, autocast, fmt)
            row["seconds"] = loop_seconds + time.perf_counter() - t1
            row["train_seconds"] = loop_seconds
            if len(lanes) == 1:  # (seeds together never have a schedule that watches a loss)
                plan.end_epoch(row.get("val_loss", row["train_loss"]))  # plateau never watches the test set
            lane.history.rows.append(row)
            s = lane.seed
            if s.checkpoint is not None:
                from cifarlab.resume import state_of

                s.checkpoint(state_of(epoch, lane.history.rows, s.model, lane.opt, lane.ema, lane.gen, device,
                                      lane.before + time.perf_counter() - run_start, lr_find))
            if s.on_epoch is not None:
                s.on_epoch(row)
            if s.log is not None:
                elapsed = time.perf_counter() - run_start
                s.log(_epoch_line(row, cfg.epochs, elapsed / (epoch - lane.done) * (cfg.epochs - epoch)))
            if row.get("diverged"):
                # NaN/inf loss never recovers: stop instead of spending the remaining epochs.
                lane.history.meta["diverged_at_epoch"] = epoch
                if s.log is not None:
                    s.log(f"stopping: the loss is not finite at epoch {epoch} (learning rate too high?)")
                finish(lane)
    for lane in lanes:
        if lane.history.meta.get("train_seconds") is None:
            finish(lane)
    return [lane.history for lane in lanes]


def _prepare(step: TrainStep, data: DataSplits, cfg: TrainConfig, bs: int, autocast, fmt, compiled: bool,
             graph: bool, plan: StepPlan, log, eval_net: nn.Module | None = None) -> tuple[bool, float]:
    """Compile, autotune and capture before the timed epochs; (still compiled?, seconds taken).

    Each of compiling and capturing that fails is reported in one line and dropped; the run then
    starts from the untouched weights either way. `eval_net`: what evaluates (default `step.net`;
    seeds together: one seed's model, as each seed is evaluated on its own).
    """
    t0 = time.perf_counter()
    use_cuda = step.device.type == "cuda"
    xb, yb = data.train.x[:bs], data.train.y[:bs]
    if step.seeds:  # one batch per seed: (seeds, bs, ...)
        xb, yb = xb.expand(step.seeds, *xb.shape).contiguous(), yb.expand(step.seeds, *yb.shape).contiguous()
    if fmt is not None:
        xb = xb.contiguous(memory_format=fmt)
    state = step.snapshot()
    try:
        if compiled:
            try:
                _warm_up(step, data, cfg, xb, yb, autocast, fmt, eval_too=not cfg.ema, eval_net=eval_net)
            except Exception as exc:  # noqa: BLE001 - e.g. no C compiler for Triton, an op inductor cannot lower
                # A run that cannot compile can still train: say so and go on eagerly.
                _warn(log, "torch.compile failed", exc, "training without it")
                step.net, compiled = step.model, False
                torch.compiler.reset()
        if use_cuda and not compiled:  # cuDNN picks its algorithms on the first calls of each shape
            _warm_up(step, data, cfg, xb, yb, autocast, fmt, eval_net=eval_net)
        if graph:
            try:
                step.capture(xb, yb, plan.rows(1))
            except Exception as exc:  # noqa: BLE001 - e.g. an op that syncs, a schedule that moves momentum
                _warn(log, "CUDA graph capture failed", exc, "training without it")
                step.uncapture()
    finally:  # also when something fails half-way
        step.restore(state)
    if use_cuda:
        torch.cuda.synchronize(step.device)
    return compiled, time.perf_counter() - t0


def _warn(log, what: str, exc: Exception, outcome: str) -> None:
    """One line: what failed, the exception's first line, and what the run does instead."""
    if log is not None:
        reason = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:200]
        log(f"warning: {what} ({exc.__class__.__name__}: {reason}); {outcome}")


def _epoch_row(epoch, loss_sum, correct, seen, lr, model, data: DataSplits, cfg,
               autocast, fmt) -> tuple[dict, torch.Tensor]:
    """The epoch's history row and its test logits (see `History.test_logits`)."""
    # The single host sync of the epoch happens here, after the evaluation is queued too.
    metrics = {"train_loss": loss_sum / seen, "train_acc": correct.float() / seen}
    if data.val is not None:
        ev, _ = _evaluate(model, data.val, cfg, autocast, fmt, False)
        metrics.update(val_loss=ev["loss"], val_acc=ev["acc"])
    test_logits = None
    if data.test is not None:
        # The 6-view TTA costs 6 passes over the test set: only at the last epoch.
        ev, test_logits = _evaluate(model, data.test, cfg, autocast, fmt, cfg.tta,
                                    rich_tta=cfg.tta and epoch == cfg.epochs)
        metrics.update({f"test_{k}": v for k, v in ev.items()})
    values = torch.stack([v.float() for v in metrics.values()]).tolist()  # Python floats
    row = {"epoch": epoch, **dict(zip(metrics, values)), "lr": float(lr)}
    if not all(math.isfinite(row[k]) for k in ("train_loss", "val_loss", "test_loss") if k in row):
        row["diverged"] = True
    return row, test_logits


def _warm_up(step: TrainStep, data: DataSplits, cfg: TrainConfig, xb, yb, autocast, fmt,
             eval_too: bool = True, eval_net: nn.Module | None = None) -> None:
    """Compile / autotune on throw-away steps and evaluations; the caller restores the state.

    Full steps (forward, backward, optimiser, EMA), so that everything a step runs is compiled or
    tuned before the timed epochs; `TrainStep.restore` then undoes them.
    """
    for _ in range(2):
        step(xb, yb)
    for split in (data.val, data.test) if eval_too else ():  # an EMA copy evaluates eagerly
        if split is not None:
            # Every batch shape evaluation will see (a full batch and the ragged last one), so no
            # recompilation lands inside the timed epochs.
            ragged = len(split) % cfg.eval_batch_size
            for xs in (split.x[: cfg.eval_batch_size], split.x[len(split) - ragged:]):
                if len(xs):  # no ragged batch: an empty slice
                    predict(eval_net or step.net, xs, cfg.eval_batch_size, cfg.tta, autocast, fmt)


@torch.no_grad()
def _memory_format(model: nn.Module, probe: torch.Tensor) -> torch.memory_format:
    """channels_last (faster cuDNN convolutions) unless the model's forward cannot take it.

    Course models often flatten with `x.view(x.size(0), -1)`, which a channels_last map refuses
    ("view size is not compatible with input tensor's size and stride"); they train in NCHW instead.
    Probed on a copy, in eval mode, so nothing of the model (BN statistics) changes.
    """
    trial = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)
    try:
        trial(probe.contiguous(memory_format=torch.channels_last))
        return torch.channels_last
    except RuntimeError:
        return torch.contiguous_format


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    n = torch.get_num_threads()
    return f"cpu ({n} thread{'s' if n != 1 else ''})"
