"""Norm and activation factories: strings become layer classes here and nowhere else.

Every norm factory is called as `norm(C)` so blocks can swap BN, GN and LN without knowing which.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

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


def _layer_norm(channels: int) -> nn.GroupNorm:
    # LayerNorm over (C, H, W) per sample with a per-channel affine: GroupNorm with one group.
    # nn.LayerNorm([C, H, W]) would tie the layer to one input size and cost 2*C*H*W parameters.
    return nn.GroupNorm(1, channels)


def norm_layer(kind: str, groups: int = DEFAULT_GROUPS) -> NormFactory | None:
    """Return a `norm(C) -> nn.Module` factory for 'bn', 'gn', 'ln', or None for 'none'."""
    factories: dict[str, NormFactory | None] = {
        "bn": nn.BatchNorm2d,
        "gn": partial(_group_norm, groups=groups),
        "ln": _layer_norm,
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
