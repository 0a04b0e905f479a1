"""One optimiser step as one unit, and its capture as a CUDA graph (issue 11).

`TrainStep` does all of a step on the device: forward, loss (label smoothing + L1/L2 penalty),
backward, the optimiser update at this step's hyperparameters, the EMA update and the epoch's
loss and accuracy sums, and reads nothing back. On CUDA, `capture()` records it once as a CUDA
graph over static input buffers; every later step is then two copies into those buffers and one
`replay()`: no Python, no dynamo guards, no per-kernel launch cost. The first H100 profile
(2026-11-27, budget-net BN, batch 512, --compile on) measured 1.35 ms of kernels in a 7.3 ms step,
the rest host time for ~215 launches, so a captured step should cost about its kernel time.

Hyperparameters come from `StepPlan`: the run's schedule (the optim.py registry) run ahead on a
shadow optimiser, giving each step's learning rate (and momentum, for one-cycle). Uncaptured, the
step copies that step's Python floats into the optimiser: exactly the numbers the scheduler itself
would have set, so histories do not move. Captured, each group's learning rate is a device tensor
that the step fills from the epoch's table on the device, so the schedule stays exact inside the
graph and the host does nothing per step.
"""
from __future__ import annotations

import copy
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cifarlab.config import OptimConfig
from cifarlab.optim import create_schedule, penalty

# The hyperparameters a schedule may move: torch's schedulers set lr; OneCycleLR also cycles SGD's
# momentum or Adam's beta1.
SCHEDULED = ("lr", "momentum", "betas")


class StepPlan:
    """Every optimiser step's hyperparameters, from the run's schedule stepped on a shadow optimiser.

    The real optimiser never gets a scheduler. `rows(epoch)[i][g]` holds what the schedule sets for
    param group `g` before step `i` of `epoch` (1-based). A schedule that watches a loss (plateau)
    gets it through `end_epoch` before the next epoch's rows exist; the others are simulated on
    demand (~9 us per step on the host: 18 ms for a 20-epoch budget-net run at batch 512).
    """

    def __init__(self, opt: torch.optim.Optimizer, o: OptimConfig, epochs: int, steps: int) -> None:
        # Same optimiser class and group settings as the real one (so a schedule sees the same keys,
        # e.g. OneCycleLR's momentum or betas), over one dummy parameter per group.
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [torch.zeros(1, requires_grad=True)]}
                  for g in opt.param_groups]
        self._shadow = type(opt)(groups)
        self._schedule = create_schedule(self._shadow, o, epochs, steps)
        self._shadow.step()  # a no-op (no gradients); a scheduler warns if it steps before its optimizer ever did
        self.monitors = self._schedule.monitors
        self.steps = steps
        self._epochs: list[list[list[dict]]] = []
        self._waiting = False  # a monitoring schedule has not been told the last simulated epoch's loss

    def rows(self, epoch: int) -> list[list[dict]]:
        """Per step of `epoch` (1-based), per param group: the scheduled hyperparameters."""
        while len(self._epochs) < epoch:
            if self._waiting:
                raise RuntimeError(f"epoch {len(self._epochs) + 1}'s learning rates depend on a loss not yet reported")
            rows = []
            for _ in range(self.steps):
                rows.append([{k: g[k] for k in SCHEDULED if k in g} for g in self._shadow.param_groups])
                self._schedule.step_batch()
            self._epochs.append(rows)
            if self.monitors:
                self._waiting = True
            else:
                self._schedule.step_epoch(math.nan)  # a per-epoch schedule that watches nothing (step)
        return self._epochs[epoch - 1]

    def end_epoch(self, monitored_loss: float) -> None:
        """Report an epoch's monitored loss (plateau); other schedules ignore it."""
        if self.monitors:
            self._schedule.step_epoch(monitored_loss)
            self._waiting = False

    def replay(self, monitored_losses: list[float]) -> None:
        """Bring a new plan to where the run's stood after len(monitored_losses) epochs (a resumed run):
        the schedule is stepped through those epochs again, plateau told each epoch's loss as it was."""
        for epoch, loss in enumerate(monitored_losses, start=1):
            self.rows(epoch)
            self.end_epoch(loss)


class TrainStep:
    """forward -> loss -> backward -> optimiser -> EMA -> metric sums, as one call on static tensors.

    `run(x, y, i)` takes step `i` of the current epoch: uncaptured it sets the step's hyperparameters
    on the host and calls the step; captured it copies the batch into the graph's inputs and replays.
    `loss_sum` and `correct` accumulate on the device over an epoch (`start_epoch` zeroes them).
    """

    def __init__(self, model: nn.Module, net: Callable, opt: torch.optim.Optimizer, ema, terms: list,
                 smoothing: float, autocast: Callable, steps: int, device: torch.device, seeds: int = 0) -> None:
        self.model, self.net, self.opt, self.ema = model, net, opt, ema
        self.terms, self.smoothing, self.autocast = terms, smoothing, autocast
        self.steps, self.device = steps, device
        # seeds > 0: `model` is a stack.Stack's module and `net` its vmapped forward; a batch is then
        # (seeds, B, ...), the loss summed over the seeds (each slice's gradient is its own seed's) and
        # the sums below are per seed, shape (seeds,).
        self.seeds = seeds
        shape = (seeds,) if seeds else ()
        self.loss_sum = torch.zeros(shape, device=device)  # sum over the epoch of loss * batch size
        self.correct = torch.zeros(shape, dtype=torch.long, device=device)
        self.loss: torch.Tensor | None = None  # the last step's loss, for a progress bar
        self.graph: torch.cuda.CUDAGraph | None = None
        self._rows: list[list[dict]] = []
        # Device learning rates (what a graph needs): one 0-dim tensor per group, filled in the step
        # from the epoch's (steps, groups) table at a device-side step counter.
        self._lrs: list[torch.Tensor] | None = None
        self._lr_table: torch.Tensor | None = None
        self._lr_index: torch.Tensor | None = None
        self._x: torch.Tensor | None = None
        self._y: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One optimiser step on batch (x, y), entirely on the device."""
        if self._lrs is not None:
            row = self._lr_table.index_select(0, self._lr_index)  # (1, groups), no host read
            for g, lr in enumerate(self._lrs):
                lr.copy_(row[0, g])
            self._lr_index.add_(1)
        with self.autocast():
            out = self.net(x)
        if self.seeds:  # (seeds, B, classes): each seed's mean loss, shape (seeds,)
            loss = F.cross_entropy(out.float().flatten(0, 1), y.flatten(), reduction="none",
                                   label_smoothing=self.smoothing).view(y.shape).mean(1)
            total = loss.sum()
        else:
            loss = total = F.cross_entropy(out.float(), y, label_smoothing=self.smoothing)
        if self.terms:
            total = total + penalty(self.terms)
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        self.opt.step()
        if self.ema is not None:
            self.ema.update(self.model)
        loss = loss.detach()
        self.loss_sum += loss * y.shape[-1]
        self.correct += (out.detach().argmax(-1) == y).sum(-1)
        self.loss = loss

    def start_epoch(self, rows: list[list[dict]]) -> None:
        """Zero the epoch's sums and load its hyperparameters (`StepPlan.rows`)."""
        self.loss_sum.zero_()
        self.correct.zero_()
        self._rows = rows
        if self._lrs is not None:
            for row in rows:  # a graph holds every other hyperparameter fixed: refuse to train wrongly
                for g, values in zip(self.opt.param_groups, row):
                    moved = [k for k in values if k != "lr" and values[k] != g[k]]
                    if moved:
                        raise RuntimeError(f"the schedule moves {moved[0]} every step, which a CUDA graph would freeze")
            table = torch.tensor([[g["lr"] for g in row] for row in rows], dtype=torch.float32)
            if self.device.type == "cuda":  # pinned: the upload queues behind the work in flight, no wait
                table = table.pin_memory()
            self._lr_table.copy_(table, non_blocking=True)
            self._lr_index.zero_()

    def run(self, x: torch.Tensor, y: torch.Tensor, i: int) -> None:
        """Step `i` of the epoch on batch (x, y)."""
        if self.graph is not None:
            self._x.copy_(x)
            self._y.copy_(y)
            self.graph.replay()
            return
        if self._lrs is None:
            for g, values in zip(self.opt.param_groups, self._rows[i]):
                g.update(values)
        self(x, y)

    def use_device_lr(self) -> None:
        """Make each group's learning rate a float32 device tensor that the step itself sets."""
        groups = self.opt.param_groups
        # float32: CUDA's fused SGD and Adam kernels read a tensor learning rate as float.
        self._lrs = [torch.tensor(float(g["lr"]), dtype=torch.float32, device=self.device) for g in groups]
        for g, lr in zip(groups, self._lrs):
            g["lr"] = lr
        self._lr_table = torch.zeros((self.steps, len(groups)), device=self.device)
        self._lr_index = torch.zeros(1, dtype=torch.long, device=self.device)

    def capture(self, x: torch.Tensor, y: torch.Tensor, rows: list[list[dict]], warmup_steps: int = 3) -> None:
        """Record the step as a CUDA graph with (x, y)'s shapes; the caller restores the state after.

        Runs `warmup_steps` real steps first, on a side stream as torch's whole-network capture recipe
        asks (cuDNN autotuning, lazily created optimiser state, compilation of a compiled model).
        """
        if self.device.type != "cuda":
            raise RuntimeError("CUDA graphs need a CUDA device")
        self.use_device_lr()
        self.start_epoch(rows)  # also refuses a schedule that moves more than the learning rate
        self._x, self._y = x.clone(), y.clone()  # the graph's inputs (clone keeps channels_last)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(warmup_steps):
                self(self._x, self._y)
        torch.cuda.current_stream(self.device).wait_stream(side)
        for g in self.opt.param_groups:  # Adam/AdamW refuse capture unless told; SGD has no such flag
            if "capturable" in g:
                g["capturable"] = True
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self(self._x, self._y)
        self.graph = graph

    def uncapture(self) -> None:
        """Back to the host-driven step (after a failed capture): Python float learning rates."""
        self.graph = None
        if self.device.type == "cuda":  # a capture that failed in capture_end() never restored the stream
            torch.cuda.set_stream(torch.cuda.default_stream(self.device))
        if self._lrs is not None:
            for g, lr in zip(self.opt.param_groups, self._lrs):
                g["lr"] = float(lr)
        for g in self.opt.param_groups:
            if "capturable" in g:
                g["capturable"] = False
        self._lrs = self._lr_table = self._lr_index = self._x = self._y = None

    def snapshot(self) -> dict:
        """The weights and buffers to come back to after warm-up steps."""
        return copy.deepcopy(self.model.state_dict())

    def restore(self, state: dict) -> None:
        """Undo warm-up steps: weights, norm statistics, EMA copy, optimiser state (`start_epoch` zeroes the sums).

        In place, so a captured graph keeps its tensors. Zeroed optimiser state is a fresh one for
        SGD and Adam/AdamW (SGD's first step copies the gradient into its buffer: 0.9 * 0 + g = g);
        without a graph the state is simply dropped, which is fresh by definition.
        """
        self.model.load_state_dict(state)
        if self.ema is not None:
            self.ema.model.load_state_dict(state)
        if self.graph is None:
            self.opt.state.clear()
            for p in self.model.parameters():
                p.grad = None
        else:
            for state_of_param in self.opt.state.values():
                for value in state_of_param.values():
                    if torch.is_tensor(value):
                        value.zero_()
        self.model.train()
