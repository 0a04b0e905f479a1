"""Smith's learning-rate range test (Smith, 2017, "Cyclical learning rates", section 3.3).

The run's own optimiser step (step.TrainStep: same model, optimiser, momentum, weight decay, label
smoothing, penalties, augmentation and batch size) is taken `steps` times while the learning rate
grows exponentially from `start_lr` to `end_lr`; the step gets this ramp as its per-step table
instead of the schedule's. The loss is smoothed with a debiased exponential average and the test
stops once the smoothed loss exceeds 4x its best, or a loss is not finite. The model's weights and
buffers are restored afterwards.

Suggested peak lr: the lr at the smoothed loss's minimum, divided by 10. The minimum is where
training at that lr stops making progress (the edge of divergence); a schedule peaking there spends
its peak too close to that edge, and a tenth of it is the usual margin (fastai's `lr_min`, Smith's
"one order of magnitude below the maximum" for a one-cycle peak). The lr of steepest descent is
printed too: it rests on a derivative of a noisy curve and moved more between seeds on CIFAR-10
(see BENCHMARKS.md for both on s8-net and budget-net).
"""
from __future__ import annotations

import copy
import csv
import io
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from cifarlab.config import LRFindConfig, TrainConfig
from cifarlab.data import Split, augment_batch
from cifarlab.errors import ConfigError
from cifarlab.layers import in_mode
from cifarlab.optim import create_optimizer, penalty_terms
from cifarlab.step import TrainStep

SMOOTHING = 0.98  # loss EMA factor: averages over ~50 steps (1 / (1 - 0.98)), a fifth of a 300-step ramp
DIVERGED = 4.0  # stop once the smoothed loss is this many times its best
RULE = "minimum of the smoothed loss / 10"
SKIP = 0.1  # the steepest-descent search skips this fraction of the first steps: the debiased EMA is noisy there


@dataclass
class RangeTest:
    """The curve (one point per step taken) and what it suggests."""

    lrs: list[float] = field(default_factory=list)  # the peak lr of each step (norm groups: x norm_lr_scale)
    losses: list[float] = field(default_factory=list)  # raw training loss of the step (label-smoothed)
    smoothed: list[float] = field(default_factory=list)
    stopped: str = "end"  # "end" | "diverged" (smoothed > 4x best) | "not finite"
    images: int = 0  # training images it drew from
    batch_size: int = 0
    seconds: float = 0.0

    @property
    def best(self) -> int:
        """Index of the smoothed loss's minimum."""
        return int(np.argmin(self.smoothed))

    @property
    def minimum_lr(self) -> float:
        return self.lrs[self.best]

    @property
    def suggestion(self) -> float:
        """The suggested peak learning rate (RULE)."""
        return self.minimum_lr / 10

    @property
    def steepest_lr(self) -> float:
        """The lr where the smoothed loss falls fastest per decade of lr, before its minimum."""
        start = min(int(SKIP * len(self.lrs)), max(0, self.best - 2))
        if self.best - start < 2:
            return self.lrs[self.best]
        slope = np.gradient(np.asarray(self.smoothed[start:self.best + 1]), np.log10(self.lrs[start:self.best + 1]))
        return self.lrs[start + int(np.argmin(slope))]

    def summary(self) -> dict:
        """The facts a run records (history.json meta `lr_auto`)."""
        return {"lr": self.suggestion, "rule": RULE, "minimum_lr": self.minimum_lr, "steepest_lr": self.steepest_lr,
                "steps": len(self.lrs), "stopped": self.stopped, "start_lr": self.lrs[0], "last_lr": self.lrs[-1],
                "images": self.images, "batch_size": self.batch_size, "split": "train",
                "seconds": round(self.seconds, 2)}

    def csv_text(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["step", "lr", "loss", "smoothed_loss"])
        for i, (lr, loss, smooth) in enumerate(zip(self.lrs, self.losses, self.smoothed), start=1):
            writer.writerow([i, f"{lr:.6g}", f"{loss:.6g}", f"{smooth:.6g}"])
        return out.getvalue()

    def line(self) -> str:
        """One line for the log: the suggestion, how it was found, and when to distrust it."""
        text = (f"suggested peak lr {self.suggestion:.3g} ({RULE}: minimum at lr {self.minimum_lr:.3g}; steepest "
                f"descent at lr {self.steepest_lr:.3g}); {len(self.lrs)} steps of batch {self.batch_size} on "
                f"{self.images:,} training images, {self.stopped_text()}")
        if self.best == len(self.lrs) - 1:
            text += "; the loss was still falling at the last lr: raise --end-lr"
        return text

    def stopped_text(self) -> str:
        return {"end": "ran to the end of the ramp",
                "diverged": f"stopped at lr {self.lrs[-1]:.3g} (smoothed loss > {DIVERGED:g}x its best)",
                "not finite": f"stopped at lr {self.lrs[-1]:.3g} (the loss was not finite)"}[self.stopped]


def ramp(find: LRFindConfig) -> np.ndarray:
    """The exponential lr ramp: start_lr, ..., end_lr over `steps` steps."""
    return find.start_lr * (find.end_lr / find.start_lr) ** (np.arange(find.steps) / (find.steps - 1))


def range_test(model: nn.Module, train: Split, cfg: TrainConfig, find: LRFindConfig, device: torch.device,
               autocast: Callable = nullcontext, memory_format: torch.memory_format | None = None) -> RangeTest:
    """Run the range test on `train` (already on `device`, with `model`); the model is left as it was."""
    t0 = time.perf_counter()
    n = len(train)
    bs = min(cfg.batch_size, n)
    per_epoch = n // bs
    lrs = ramp(find)
    # The optimiser `cfg` describes, built at start_lr so that each group's ratio to it (norm_lr_scale)
    # carries over to every step of the ramp.
    opt = create_optimizer(model, replace(cfg.optim, lr=find.start_lr), device)
    ratios = [g["lr"] / find.start_lr for g in opt.param_groups]
    step = TrainStep(model, model, opt, None, penalty_terms(model, cfg.reg), cfg.reg.label_smoothing, autocast,
                     find.steps, device)
    step.start_epoch([[{"lr": float(lr) * r} for r in ratios] for lr in lrs])
    state = copy.deepcopy(model.state_dict())
    gen = torch.Generator(device=device)
    gen.manual_seed(cfg.seed)
    result = RangeTest(images=n, batch_size=bs)
    avg, best = 0.0, math.inf
    try:
        with in_mode(model, training=True):
            for i in range(find.steps):
                b = i % per_epoch  # a new order for each pass over the split
                if b == 0:
                    order = torch.randperm(n, device=device, generator=gen)
                idx = order[b * bs: (b + 1) * bs]
                xb = augment_batch(train.x[idx], cfg.augment, gen)
                if memory_format is not None:
                    xb = xb.contiguous(memory_format=memory_format)
                step.run(xb, train.y[idx], i)
                # One host read per step: the stopping rule needs every loss (300 reads, a few ms on CUDA).
                loss = float(step.loss)
                if not math.isfinite(loss):
                    if not result.lrs:  # the first loss comes before any update: the model itself gives NaN/inf
                        raise ConfigError("the range test's first loss is not finite, before any update: the model's "
                                          "output is not finite on the training images")
                    result.stopped = "not finite"
                    return result
                avg = SMOOTHING * avg + (1 - SMOOTHING) * loss
                smoothed = avg / (1 - SMOOTHING ** (i + 1))
                result.lrs.append(float(lrs[i]))
                result.losses.append(loss)
                result.smoothed.append(smoothed)
                best = min(best, smoothed)
                if smoothed > DIVERGED * best:
                    result.stopped = "diverged"
                    return result
            return result
    finally:
        model.load_state_dict(state)
        for p in model.parameters():
            p.grad = None
        result.seconds = time.perf_counter() - t0


def auto_lr(model: nn.Module, train: Split, cfg: TrainConfig, device: torch.device, autocast: Callable = nullcontext,
            memory_format: torch.memory_format | None = None,
            log: Callable[[str], None] | None = None) -> RangeTest:
    """`--lr auto`: the range test with LRFindConfig's defaults on the training split (never val or test)."""
    result = range_test(model, train, cfg, LRFindConfig(), device, autocast, memory_format)
    if log is not None:
        log(f"lr auto: {result.line()}")
    return result


def plot_png(result: RangeTest, title: str = "") -> bytes:
    """Loss against lr (log axis): raw and smoothed, with the minimum and the suggestion marked."""
    from cifarlab.report.figures import STYLE, to_png
    import matplotlib.pyplot as plt

    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.4, 3.8), layout="constrained")
        ax.plot(result.lrs, result.losses, color="#9bbcd8", lw=0.8, label="loss (per step)")
        ax.plot(result.lrs, result.smoothed, color="#1f77b4", lw=1.8, label=f"smoothed (EMA {SMOOTHING:g})")
        ax.axvline(result.minimum_lr, color="#7f7f7f", ls=":", lw=1.2, label=f"minimum, lr {result.minimum_lr:.3g}")
        ax.axvline(result.suggestion, color="#d62728", ls="--", lw=1.4, label=f"suggested, lr {result.suggestion:.3g}")
        ax.set_xscale("log")
        # From the minimum to the start of the curve, with room above: the climb after the minimum may leave it.
        low = min(min(result.smoothed), float(np.percentile(result.losses[: result.best + 1], 5)))
        high = max(result.smoothed[: result.best + 1])
        span = max(high - low, 0.05 * abs(low) + 1e-3)
        ax.set_ylim(low - 0.1 * span, high + 0.6 * span)
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training loss")
        ax.set_title(title or "learning-rate range test", loc="left")
        ax.legend(frameon=False, loc="upper left")
        return to_png(fig)


def write_outputs(folder: str | os.PathLike, result: RangeTest, title: str = "") -> tuple[Path, Path]:
    """`folder/lr_find.csv` (every step) and `folder/lr_find.png`."""
    folder = Path(folder)
    csv_path, png_path = folder / "lr_find.csv", folder / "lr_find.png"
    csv_path.write_text(result.csv_text())
    png_path.write_bytes(plot_png(result, title))
    return csv_path, png_path
