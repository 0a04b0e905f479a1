"""Norm and activation factories: strings become layer classes here and nowhere else.

Every norm factory is called as `norm(C)` so blocks can swap BN, GN and LN without knowing which.
A model of your own takes the same choice as a string argument:

    from cifarlab.layers import norm_layer

    class Net(nn.Module):
        def __init__(self, norm: str = "bn", groups: int = 4):
            super().__init__()
            Norm = norm_layer(norm, groups)  # 'bn' | 'gn' | 'ln' -> called as Norm(channels)
            self.block = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), Norm(16))

and then `cifarlab train --model net.py:Net --norm gn` passes `norm="gn"` to it.
"""
from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from typing import Callable, Iterator

from torch import nn

from cifarlab.config import NORMS
from cifarlab.errors import ConfigError

NormFactory = Callable[[int], nn.Module]

# What a model that takes `norm` / `groups` uses unless told otherwise.
DEFAULT_NORM = "bn"
DEFAULT_GROUPS = 4  # GroupNorm groups; see _group_norm for widths it does not divide


def _group_norm(channels: int, groups: int) -> nn.GroupNorm:
    # Fall back to the largest divisor of C not above the requested count, so one `groups`
    # value works for every layer width of a net (e.g. groups=4 on a 10-channel layer -> 2).
    g = max(d for d in range(1, min(groups, channels) + 1) if channels % d == 0)
    return nn.GroupNorm(g, channels)


class LayerNorm2d(nn.GroupNorm):
    """Layer norm of (B, C, H, W) maps: each image normalised over C, H and W, with a per-channel affine.

    The same computation and parameters as GroupNorm with one group (state_dict keys `weight`, `bias`);
    a class of its own so that layer tables and reports show "LayerNorm2d", not "GroupNorm", and a
    BN / GN / LN comparison can tell LN from GN. nn.LayerNorm([C, H, W]) would tie the layer to one
    input size and cost 2*C*H*W parameters.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__(1, num_channels, eps, affine)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}, affine={self.affine}"


def norm_layer(kind: str, groups: int = DEFAULT_GROUPS) -> NormFactory | None:
    """Return a `norm(C) -> nn.Module` factory for 'bn', 'gn', 'ln', or None for 'none'."""
    factories: dict[str, NormFactory | None] = {
        "bn": nn.BatchNorm2d,
        "gn": partial(_group_norm, groups=groups),
        "ln": LayerNorm2d,
        "none": None,
    }
    if kind not in factories:
        raise ConfigError(f"unknown norm '{kind}' (choose from {', '.join(NORMS)})")
    if groups < 1:
        raise ConfigError(f"GroupNorm groups must be >= 1, got {groups}")
    return factories[kind]


_ACTS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


def act_layer(kind: str) -> type[nn.Module]:
    """Return the activation class for 'relu', 'gelu' or 'silu'."""
    if kind not in _ACTS:
        raise ConfigError(f"unknown activation '{kind}' (choose from {', '.join(_ACTS)})")
    return _ACTS[kind]


@contextmanager
def in_mode(model: nn.Module, training: bool = False) -> Iterator[None]:
    """`model` in eval (or train) mode for the block; afterwards every module is back in its own mode."""
    modes = {m: m.training for m in model.modules()}
    model.train(training)
    try:
        yield
    finally:
        for m, was_training in modes.items():
            m.training = was_training
