"""Seeds together without CUDA: K models of one architecture trained as one batched computation (issue 28).

(With CUDA, train.py replays each seed's own captured step on a stream of its own instead: on an H200
that was 1.3-1.9x faster than one seed after another, where this stacked step was 0.6-0.7x;
bench/seeds_micro.py, BENCHMARKS.md.)

`Stack(models)` stacks the K models' parameters and buffers along a new first dimension into one
module of the same structure, and points each model's own tensors at its slice (views: the K
models see every update without a copy). `Stack.net` is the vmapped forward: (K, B, 3, H, W) ->
(K, B, classes) through `torch.func.functional_call`, so any `nn.Module` works unchanged, a model
from a user's file too. Under vmap a convolution with stacked weights becomes one grouped
convolution over K * C channels and a norm one norm over K * C channels; BN's in-place running
statistics update reaches the stacked buffers (tests/test_stack.py checks each against the models
trained one by one).

One optimiser over the stacked parameters is K optimisers at once as long as its update is
elementwise per parameter (SGD, Adam, AdamW: their state has the parameter's shape), and the loss
that is differentiated is the sum of the K seeds' losses, so each slice's gradient is its own
seed's. `LaneOptimizer` shows one seed's slice of that state in the layout of a one-model
optimiser, so checkpoints are the same files either way and a run can be continued alone or
together. Dropout under vmap draws one mask per seed from torch's global generator (randomness
"different"), not from each seed's own stream as a run alone does: the masks are as random, but
not the same numbers.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap


def _owner(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The submodule that holds tensor `name` ('stages.0.conv1.weight') and the tensor's own name."""
    *path, leaf = name.split(".")
    for part in path:
        module = getattr(module, part)
    return module, leaf


def _tensors(model: nn.Module) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, torch.Tensor]]]:
    # Every name, tied weights included, so that a tensor two layers share is stacked once and both see it.
    return (list(model.named_parameters(remove_duplicate=False)),
            list(model.named_buffers(remove_duplicate=False)))


def point_at(model: nn.Module, source: nn.Module, k: int) -> None:
    """Make `model`'s parameters and buffers views of slice `k` of `source`'s stacked ones (same names)."""
    stacked = dict(source.named_parameters(remove_duplicate=False))
    buffers = dict(source.named_buffers(remove_duplicate=False))
    params, bufs = _tensors(model)
    for name, p in params:
        p.data = stacked[name].data[k]
    for name, _ in bufs:
        owner, leaf = _owner(model, name)
        owner._buffers[leaf] = buffers[name][k]


def detach(model: nn.Module) -> None:
    """Give `model` tensors of its own again (copies of what its views show): a finished seed keeps its
    weights while the others train on."""
    params, bufs = _tensors(model)
    for _, p in params:
        p.data = p.data.clone()
    for name, b in bufs:
        owner, leaf = _owner(model, name)
        owner._buffers[leaf] = b.clone()


class Stack:
    """K same-shaped models as one module with stacked tensors, and its vmapped forward `net`."""

    def __init__(self, models: list[nn.Module]) -> None:
        self.k = len(models)
        # The structure of the first model, its tensors replaced by the stacked ones: the optimiser's
        # groups, the L1/L2 terms and the EMA copy are then built from it as from any model.
        self.module = copy.deepcopy(models[0])
        every = [dict(_tensors(m)[0]) for m in models]
        made: dict[int, nn.Parameter] = {}
        for name, p in _tensors(models[0])[0]:
            if id(p) not in made:
                made[id(p)] = nn.Parameter(torch.stack([e[name].detach() for e in every]),
                                           requires_grad=p.requires_grad)
            owner, leaf = _owner(self.module, name)
            setattr(owner, leaf, made[id(p)])
        every_buf = [dict(_tensors(m)[1]) for m in models]
        for name, _ in _tensors(models[0])[1]:
            owner, leaf = _owner(self.module, name)
            owner._buffers[leaf] = torch.stack([e[name] for e in every_buf])
        for k, m in enumerate(models):
            point_at(m, self.module, k)
        self._params = dict(self.module.named_parameters())
        self._buffers = dict(self.module.named_buffers())
        self._forward = vmap(self._one, randomness="different")

    def _one(self, params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.module, (params, buffers), (x,))

    def net(self, x: torch.Tensor) -> torch.Tensor:
        """(K, B, ...) -> (K, B, classes): seed k's batch through seed k's weights, in one computation."""
        return self._forward(self._params, self._buffers, x)

    def lane_ema(self, ema_module: nn.Module, model: nn.Module, k: int) -> nn.Module:
        """Seed `k`'s view of a stacked EMA copy (`ema_module`), as a model shaped like `model`."""
        lane = copy.deepcopy(model).eval()
        point_at(lane, ema_module, k)
        return lane


def unstackable(models: list[nn.Module], x: torch.Tensor, y: torch.Tensor, autocast) -> str | None:
    """Why these models cannot train stacked (their forward does something vmap cannot batch, such as
    reading a value on the host), or None: one forward and backward of two copies on a small batch."""
    copies = [copy.deepcopy(m).train() for m in models[:2]]
    try:
        stack = Stack(copies)
        with autocast():
            out = stack.net(x.expand(len(copies), *x.shape).contiguous())
        if out.dim() != 3 or out.shape[:2] != (len(copies), x.shape[0]):
            return f"the stacked forward gave shape {tuple(out.shape)}"
        out.float().logsumexp(-1).sum().backward()
    except Exception as exc:  # noqa: BLE001 - anything vmap refuses; the caller trains one seed at a time
        return f"{exc.__class__.__name__}: {(str(exc).strip().splitlines() or [''])[0][:160]}"
    return None


class LaneOptimizer:
    """Seed `k`'s part of an optimiser over stacked parameters, in the layout of a one-model optimiser
    (resume.state_of writes it, resume.restore loads it)."""

    def __init__(self, opt: torch.optim.Optimizer, k: int) -> None:
        self.opt, self.k = opt, k
        self._params = [p for g in opt.param_groups for p in g["params"]]

    def _mine(self, value: Any, p: torch.Tensor) -> bool:
        # State with the stacked parameter's shape is per seed (momentum, Adam's moments); the rest
        # (Adam's step count) is shared by all seeds, which always step together.
        return torch.is_tensor(value) and value.shape == p.shape

    def state_dict(self) -> dict:
        saved = self.opt.state_dict()
        state = {i: {key: v[self.k] if self._mine(v, self._params[i]) else v for key, v in s.items()}
                 for i, s in saved["state"].items()}
        return {"state": state, "param_groups": saved["param_groups"]}

    @torch.no_grad()
    def load_lane_state(self, saved: dict) -> None:
        """Copy a one-model optimiser state (a checkpoint's) into this seed's slice."""
        for i, p in enumerate(self._params):
            own = self.opt.state[p]
            for key, value in saved["state"].get(i, {}).items():
                if torch.is_tensor(value) and value.shape == p.shape[1:]:
                    if key not in own:  # a fresh optimiser makes its state at the first step
                        own[key] = torch.zeros_like(p, dtype=value.dtype)
                    own[key][self.k].copy_(value)
                elif key in own and torch.is_tensor(own[key]):
                    own[key].copy_(value)
                else:
                    own[key] = value.to(p.device).clone() if torch.is_tensor(value) else value
