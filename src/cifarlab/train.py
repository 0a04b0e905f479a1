"""The one training loop: `train(model, data, cfg) -> History`.

Hot loop rules: the data already sits on the training device, augmentation is done per batch
there, and metrics accumulate in device tensors that are read once per epoch (no host sync
inside an epoch on CUDA). The CPU path has the same semantics.
"""
from __future__ import annotations

import copy
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cifarlab.config import TrainConfig
from cifarlab.console import log_line
from cifarlab.data import DataSplits, Split, alternating_flips, augment_batch
from cifarlab.errors import ConfigError
from cifarlab.malloc import keep_freed_memory
from cifarlab.metrics import LOGGED
from cifarlab.optim import create_optimizer, create_schedule, penalty, penalty_terms


@dataclass
class History:
    """Per-epoch metrics plus run-level facts (device, parameter count, timings)."""

    rows: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    @property
    def final(self) -> dict:
        return self.rows[-1] if self.rows else {}


DATA_INIT_IMAGES = 2000  # training images a model's data-dependent init sees (always the same ones)

# --compile value -> torch.compile mode (None = eager). reduce-overhead adds CUDA graphs.
COMPILE_MODES = {"off": None, "on": "default", "reduce-overhead": "reduce-overhead", "max-autotune": "max-autotune"}


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


def seed_everything(seed: int) -> None:
    """Seed torch's CPU and CUDA generators (model init, dropout)."""
    torch.manual_seed(seed)


def autocast_for(device: torch.device, precision: str):
    """A no-argument factory of the autocast context the run uses (bf16 on CUDA by default)."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext


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
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 2000, tta: bool | str = False,
            autocast: Callable = nullcontext) -> torch.Tensor:
    """Logits (N, classes) in float32, averaged over the TTA views (`True` means "flip")."""
    views = TTA_VIEWS["flip" if tta is True else (tta or "none")]
    was_training = model.training
    model.eval()
    outs = []
    for i in range(0, x.shape[0], batch_size):
        xb = x[i: i + batch_size]
        out = 0
        for dy, dx, mirrored in views:
            xv = _translate(xb.flip(3) if mirrored else xb, dy, dx)
            if xv.is_cuda:
                xv = xv.contiguous(memory_format=torch.channels_last)
            with autocast():
                out = out + model(xv).float()
        outs.append(out / len(views))
    model.train(was_training)
    return torch.cat(outs)


def _evaluate(model, split: Split, cfg: TrainConfig, autocast, tta: bool, rich_tta: bool = False) -> dict:
    logits = predict(model, split.x, cfg.eval_batch_size, False, autocast)
    out = {"loss": F.cross_entropy(logits, split.y), "acc": (logits.argmax(1) == split.y).float().mean()}
    for key, kind, wanted in (("acc_tta", "flip", tta), ("acc_tta6", "flip-shift", rich_tta)):
        if wanted:
            out[key] = (predict(model, split.x, cfg.eval_batch_size, kind, autocast).argmax(1) == split.y).float().mean()
    return out


class _EMA:
    """Exponential moving average of the weights (buffers copied), for evaluation."""

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


def train(model: nn.Module, data: DataSplits, cfg: TrainConfig, *,
          log: Callable[[str], None] | None = log_line,
          on_epoch: Callable[[dict], None] | None = None) -> History:
    """Train `model` on `data` as `cfg` says; return the per-epoch history.

    `on_epoch(row)` is called after every epoch so a caller can persist progress as it goes.
    The model is left trained in place (with EMA weights copied in when `cfg.ema` is set).
    """
    device = resolve_device(cfg.device)
    use_cuda = device.type == "cuda"
    if use_cuda:
        torch.backends.cudnn.benchmark = True
        if device.index is not None:
            torch.cuda.set_device(device)  # so synchronize(), caches and compiled kernels use this GPU
        model = model.to(device, memory_format=torch.channels_last)
    else:
        keep_freed_memory()
        model = model.to(device)
    data = data.to(device)
    init_from_data = getattr(model, "init_from_data", None)
    if init_from_data is not None:  # e.g. budget-net's whitening stem; before warm-up saves the weights
        # Evenly strided, so a class-ordered training set still gives every class its share.
        init_from_data(data.train.x[:: max(1, len(data.train) // DATA_INIT_IMAGES)][:DATA_INIT_IMAGES])
    autocast = autocast_for(device, cfg.precision)
    mode = COMPILE_MODES[cfg.compile] if cfg.compile != "auto" else ("default" if use_cuda else None)
    compiled = mode is not None
    if compiled:
        # Dynamo keeps at most 8 compiled variants per forward() code object across models; runs of a
        # study in one process would exhaust that after ~4 configurations and silently fall back to
        # eager. A reset per run recompiles (from inductor's on-disk cache when the model repeats).
        torch.compiler.reset()
    net = torch.compile(model, mode=mode) if compiled else model

    n = len(data.train)
    bs = min(cfg.batch_size, n)
    steps = n // bs  # drop the ragged last batch: one batch shape, no tiny noisy BN batch
    opt = create_optimizer(model, cfg.optim, device)
    sched = create_schedule(opt, cfg.optim, cfg.epochs, steps)
    terms = penalty_terms(model, cfg.reg)
    smoothing = cfg.reg.label_smoothing

    def forward_backward(xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast():
            out = net(xb)
        loss = F.cross_entropy(out.float(), yb, label_smoothing=smoothing)
        total = loss + penalty(terms) if terms else loss
        opt.zero_grad(set_to_none=True)
        total.backward()
        return loss.detach(), out.detach()

    warmup_seconds = 0.0
    if compiled:
        try:
            warmup_seconds = _warm_up(model, net, data, cfg, bs, autocast, forward_backward, eval_too=not cfg.ema)
        except Exception as exc:  # noqa: BLE001 - e.g. no C compiler for Triton, an op inductor cannot lower
            # A run that cannot compile can still train: say so and go on eagerly (forward_backward
            # reads `net` at call time, so rebinding it switches the loop over).
            reason = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:200]
            if log is not None:
                log(f"warning: torch.compile failed ({exc.__class__.__name__}: {reason}); training without it")
            net, compiled = model, False
            torch.compiler.reset()
    if use_cuda and not compiled:
        warmup_seconds = _warm_up(model, net, data, cfg, bs, autocast, forward_backward)
    seed_everything(cfg.seed)
    gen = torch.Generator(device=device)
    gen.manual_seed(cfg.seed)
    ema = _EMA(model, cfg.ema) if cfg.ema else None
    flip_bits = torch.rand(n, device=device, generator=gen) < 0.5 if cfg.alt_flip else None

    history = History(meta={"device": _device_name(device), "train_images": n, "batch_size": bs,
                            "steps_per_epoch": steps, "compiled": compiled, "warmup_seconds": warmup_seconds})
    run_start = time.perf_counter()
    show_loss = not use_cuda  # reading the loss costs a host sync: only worth it on CPU
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        lr = opt.param_groups[0]["lr"]
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        perm = torch.randperm(n, device=device, generator=gen)
        with _progress(steps, f"epoch {epoch}/{cfg.epochs}") as bar:
            for i in range(steps):
                idx = perm[i * bs: (i + 1) * bs]
                flips = alternating_flips(flip_bits, idx, epoch) if flip_bits is not None else None
                xb = augment_batch(data.train.x[idx], cfg.augment, gen, flips)
                yb = data.train.y[idx]
                if use_cuda:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                loss, out = forward_backward(xb, yb)
                opt.step()
                sched.step_batch()
                if ema is not None:
                    ema.update(model)
                loss_sum += loss * bs
                correct += (out.argmax(1) == yb).sum()
                bar.update(1)
                if show_loss and not bar.disable and i % 20 == 0:
                    bar.set_postfix(loss=f"{loss.item():.3f}")
        if use_cuda:
            torch.cuda.synchronize(device)  # the one wait of the epoch, to time the loop apart from evaluation
        loop_seconds = time.perf_counter() - t0
        eval_model = ema.model if ema is not None else net
        row = _epoch_row(epoch, loss_sum, correct, steps * bs, lr, eval_model, data, cfg, autocast)
        row["seconds"] = time.perf_counter() - t0
        row["train_seconds"] = loop_seconds
        sched.step_epoch(row.get("val_loss", row["train_loss"]))  # plateau never watches the test set
        history.rows.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if log is not None:
            elapsed = time.perf_counter() - run_start
            log(_epoch_line(row, cfg.epochs, elapsed / epoch * (cfg.epochs - epoch)))
        if row.get("diverged"):
            # NaN/inf loss never recovers: stop instead of spending the remaining epochs.
            history.meta["diverged_at_epoch"] = epoch
            if log is not None:
                log(f"stopping: the loss is not finite at epoch {epoch} (learning rate too high?)")
            break
    if ema is not None:
        model.load_state_dict(ema.model.state_dict())
    train_seconds = time.perf_counter() - run_start
    loop_seconds = sum(r["train_seconds"] for r in history.rows)
    # images/s counts the training loop only (augmentation, forward, backward, step), not evaluation.
    history.meta.update(train_seconds=train_seconds,
                        images_per_second=steps * bs * len(history.rows) / max(loop_seconds, 1e-9))
    return history


def _epoch_row(epoch, loss_sum, correct, seen, lr, model, data: DataSplits, cfg, autocast) -> dict:
    # The single host sync of the epoch happens here, after the evaluation is queued too.
    metrics = {"train_loss": loss_sum / seen, "train_acc": correct.float() / seen}
    if data.val is not None:
        ev = _evaluate(model, data.val, cfg, autocast, False)
        metrics.update(val_loss=ev["loss"], val_acc=ev["acc"])
    # The 6-view TTA costs 6 passes over the test set: only at the last epoch.
    ev = _evaluate(model, data.test, cfg, autocast, cfg.tta, rich_tta=cfg.tta and epoch == cfg.epochs)
    metrics.update({f"test_{k}": v for k, v in ev.items()})
    values = torch.stack([v.float() for v in metrics.values()]).tolist()
    row = {"epoch": epoch}
    row.update({k: float(v) for k, v in zip(metrics, values)})
    row["lr"] = float(lr)
    if not all(math.isfinite(row[k]) for k in ("train_loss", "test_loss")):
        row["diverged"] = True
    return row


def _warm_up(model, net, data: DataSplits, cfg: TrainConfig, bs: int, autocast, forward_backward,
             eval_too: bool = True) -> float:
    """Compile / autotune on throw-away forward+backward passes, then restore the weights: seconds.

    Timing this apart keeps compilation out of the per-run figures. No optimizer step is taken,
    so only norm running statistics change, and those are restored.
    """
    state = copy.deepcopy(model.state_dict())
    t0 = time.perf_counter()
    try:
        xb, yb = data.train.x[:bs], data.train.y[:bs]
        if xb.is_cuda:
            xb = xb.contiguous(memory_format=torch.channels_last)
        model.train()
        for _ in range(2):
            forward_backward(xb, yb)
        for split in (data.val, data.test) if eval_too else ():  # an EMA copy evaluates eagerly
            if split is not None:
                # Every batch shape evaluation will see (a full batch and the ragged last one), so no
                # recompilation lands inside the timed epochs.
                ragged = len(split) % cfg.eval_batch_size
                for xs in (split.x[: cfg.eval_batch_size], split.x[len(split) - ragged:] if ragged else None):
                    if xs is not None and len(xs):
                        predict(net, xs, cfg.eval_batch_size, cfg.tta, autocast)
        if xb.is_cuda:
            torch.cuda.synchronize(xb.device)
        return time.perf_counter() - t0
    finally:  # also when compilation fails half-way: the run starts from the untouched weights
        for p in model.parameters():
            p.grad = None
        model.load_state_dict(state)
        model.train()


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    n = torch.get_num_threads()
    return f"cpu ({n} thread{'s' if n != 1 else ''})"
