"""Optimiser and learning-rate schedule registries, and the Keras-style L1/L2 penalty."""
from __future__ import annotations

import typing
from functools import partial
from typing import Callable

import torch
from torch import nn

from cifarlab.config import OptimConfig, Optimizer, RegConfig
from cifarlab.config import Schedule as ScheduleName


def param_groups(model: nn.Module, weight_decay: float, lr: float, norm_lr_scale: float = 1.0) -> list[dict]:
    """Conv/linear kernels decay; biases and norm parameters never do (decaying them only hurts).

    The second group's lr can be scaled: norm shifts and scales are few and see summed gradients,
    and fast-training recipes raise their lr.
    """
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            is_kernel = name == "weight" and isinstance(module, (nn.Conv2d, nn.Linear))
            (decay if is_kernel else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "lr": lr},
            {"params": no_decay, "weight_decay": 0.0, "lr": lr * norm_lr_scale}]


def _fast(device: torch.device) -> dict:
    # One fused kernel for the whole update on CUDA; multi-tensor (foreach) ops on CPU.
    return {"fused": True} if device.type == "cuda" else {"foreach": True}


def _sgd(groups, o: OptimConfig, device):
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, **_fast(device))


def _adam(groups, o: OptimConfig, device, cls=torch.optim.Adam):  # AdamW takes the same arguments
    return cls(groups, lr=o.lr, betas=(o.momentum, 0.999), **_fast(device))


# Keys are the names config.Optimizer allows (checked below): OptimConfig validates the name once.
OPTIMIZERS: dict[str, Callable] = {"sgd": _sgd, "adam": _adam, "adamw": partial(_adam, cls=torch.optim.AdamW)}


def create_optimizer(model: nn.Module, o: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    """Build the optimiser named in `o` over `model`'s parameters."""
    return OPTIMIZERS[o.name](param_groups(model, o.weight_decay, o.lr, o.norm_lr_scale), o, device)


class Schedule:
    """A learning-rate schedule stepped per batch (`step_batch`) or per epoch (`step_epoch`)."""

    def __init__(self, scheduler=None, per_batch: bool = False, monitors: bool = False) -> None:
        self.scheduler, self.per_batch, self.monitors = scheduler, per_batch, monitors

    def step_batch(self) -> None:
        if self.scheduler is not None and self.per_batch:
            self.scheduler.step()

    def step_epoch(self, monitored_loss: float) -> None:
        if self.scheduler is None or self.per_batch:
            return
        self.scheduler.step(monitored_loss) if self.monitors else self.scheduler.step()


def _linear_factor(o: OptimConfig, total: int) -> Callable[[int], float]:
    warm = max(1, round(o.warmup * total))

    def factor(step: int) -> float:  # step counts optimizer steps already taken
        if step < warm:
            return (step + 1) / warm
        frac = (step - warm) / max(1, total - warm)
        return 1.0 + (o.final_lr - 1.0) * min(1.0, frac)

    return factor


SCHEDULES: dict[str, Callable[[torch.optim.Optimizer, OptimConfig, int, int], Schedule]] = {
    "none": lambda opt, o, epochs, steps: Schedule(),
    "step": lambda opt, o, epochs, steps: Schedule(
        torch.optim.lr_scheduler.StepLR(opt, step_size=o.step_epochs, gamma=o.gamma)),
    "onecycle": lambda opt, o, epochs, steps: Schedule(
        torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=epochs * steps,
                                            pct_start=o.warmup), per_batch=True),
    "plateau": lambda opt, o, epochs, steps: Schedule(
        torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=o.gamma, patience=o.patience), monitors=True),
    "linear": lambda opt, o, epochs, steps: Schedule(
        torch.optim.lr_scheduler.LambdaLR(opt, _linear_factor(o, epochs * steps)), per_batch=True),
}


# The registries implement exactly the names the config allows.
assert set(OPTIMIZERS) == set(typing.get_args(Optimizer)) and set(SCHEDULES) == set(typing.get_args(ScheduleName))


def create_schedule(opt: torch.optim.Optimizer, o: OptimConfig, epochs: int, steps_per_epoch: int) -> Schedule:
    """Build the schedule named in `o` (steps_per_epoch = optimizer steps in one epoch)."""
    return SCHEDULES[o.schedule](opt, o, epochs, steps_per_epoch)


def penalty_terms(model: nn.Module, reg: RegConfig) -> list[tuple[float, int, torch.Tensor]]:
    """(lambda, power, kernel) for every penalised kernel: Keras kernel_regularizer per layer group."""
    terms = []
    for module in model.modules():
        group = "conv" if isinstance(module, nn.Conv2d) else "dense" if isinstance(module, nn.Linear) else None
        if group is None:
            continue
        for power, lam in ((1, getattr(reg, f"l1_{group}")), (2, getattr(reg, f"l2_{group}"))):
            if lam:
                terms.append((lam, power, module.weight))
    return terms


def penalty(terms: list[tuple[float, int, torch.Tensor]]) -> torch.Tensor | int:
    """Sum of lambda * sum(|w|) (power 1) or lambda * sum(w^2) (power 2); 0 when nothing is penalised."""
    return sum(lam * (w.abs().sum() if power == 1 else w.pow(2).sum()) for lam, power, w in terms)
