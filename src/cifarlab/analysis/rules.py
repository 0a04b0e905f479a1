"""What each kind of layer does to the receptive field and how many MACs it costs.

One rule per module class, function or tensor method, looked up in three registries. A layer without a
rule is an error that the walker reports with the layer's name: a wrong row would be worse than none.
MACs count the multiply-accumulates of convolutions and linear layers only; pools, norms, activations
and additions count 0.
"""
from __future__ import annotations

import inspect
import operator
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from cifarlab.analysis.geometry import FLAT, Geom, GeometryError, Window, adaptive_window, merge, pair, slide

Spatial = Any  # Geom | FLAT | None (None: does not depend on the input, e.g. a parameter or a shape)


@dataclass
class Op:
    """One graph node as a rule sees it: concrete arguments and output, and the geometry of its inputs."""

    args: tuple
    kwargs: dict
    out: Any
    first: Spatial  # geometry of the first input node
    branches: list  # geometry of every input node computed from the input (constants left out)
    module: nn.Module | None = None

    def bind(self, signature: Callable) -> dict[str, Any]:
        """The node's arguments by name, with defaults, as `signature` declares them."""
        bound = inspect.signature(signature).bind(*self.args, **self.kwargs)
        bound.apply_defaults()
        return bound.arguments


@dataclass
class Step:
    """A rule's verdict: the output geometry and what the node's row (if any) shows."""

    geom: Spatial  # seen by the layers that follow
    window: Window | None = None
    shown: Geom | None = None  # shown in the row instead of `geom` (a global pool that drops H and W)
    macs: int = 0
    row: bool = False  # a row even without parameters or a change of shape
    merged: bool = False  # several branches in: no single *_in geometry to show


Rule = Callable[[Op], Step]


def _hw(t: Any) -> tuple[int, int]:
    if not isinstance(t, torch.Tensor) or t.dim() != 4:
        raise GeometryError(f"turns a (B, C, H, W) map into shape {tuple(getattr(t, 'shape', ()))} without a rule")
    return (int(t.shape[-2]), int(t.shape[-1]))


def _spatial_in(op: Op) -> Geom | None:
    if op.first is FLAT:
        raise GeometryError("its input lost the (C, H, W) layout earlier (reshape, permute), so the field is unknown")
    return op.first


# ---- shape-preserving and merging layers ----

def pointwise(op: Op) -> Step:
    """Elementwise in H and W (activations, norms, dropout, arithmetic); several inputs are a merge."""
    if len(op.branches) > 1:
        return _merge(op)
    g = op.branches[0] if op.branches else None
    if isinstance(g, Geom) and _hw(op.out) != g.n:
        raise GeometryError(f"changes the map from {g.n} to {_hw(op.out)}")
    return Step(g)


def _merge(op: Op) -> Step:
    flat = [g is FLAT for g in op.branches]
    if all(flat):
        return Step(FLAT, row=True, merged=True)
    if any(flat):
        raise GeometryError("merges a spatial map with a tensor that lost its (C, H, W) layout")
    return Step(merge(op.branches, _hw(op.out)), row=True, merged=True)


def _cat_sig(tensors, dim=0): ...


def cat(op: Op) -> Step:
    """Concatenation along channels: the fields of the branches merge like an addition."""
    dim = op.bind(_cat_sig)["dim"] % op.out.dim()
    if any(isinstance(g, Geom) for g in op.branches) and dim != 1:
        raise GeometryError(f"concatenates along dimension {dim}, not channels")
    if len(op.branches) == 1:
        return Step(pointwise(op).geom, row=True)
    return _merge(op)


def _softmax_sig(input, dim=None, *args, **kwargs): ...


def softmax(op: Op) -> Step:
    """Softmax over channels is pointwise in H and W; over a spatial axis it mixes positions."""
    dim = op.module.dim if op.module is not None else op.bind(_softmax_sig)["dim"]
    if isinstance(op.first, Geom) and dim is not None and dim % 4 != 1:
        raise GeometryError(f"normalises over dimension {dim}, which mixes positions")
    return pointwise(op)


# ---- sliding windows ----

def _windowed(op: Op, w: Window, macs: int = 0) -> Step:
    g = _spatial_in(op)
    return Step(None if g is None else slide(g, w, _hw(op.out)), window=w, macs=macs, row=True)


def _conv_padding(padding: Any, kernel: tuple[int, int], dilation: tuple[int, int]) -> tuple[int, int]:
    if padding == "valid":
        return (0, 0)
    if padding == "same":  # PyTorch puts the smaller half of an odd total padding first
        return (dilation[0] * (kernel[0] - 1) // 2, dilation[1] * (kernel[1] - 1) // 2)
    return pair(padding)


def _conv_macs(out: torch.Tensor, weight: torch.Tensor) -> int:
    # weight (C_out, C_in/groups, kh, kw): H_out*W_out*C_out * C_in/groups*kh*kw per image
    return out[0].numel() * weight[0].numel()


def conv_module(op: Op) -> Step:
    """nn.Conv2d, any kernel, stride, padding (also 'same'/'valid'), dilation and groups."""
    m = op.module
    k, d = pair(m.kernel_size), pair(m.dilation)
    return _windowed(op, Window(k, pair(m.stride), _conv_padding(m.padding, k, d), d), _conv_macs(op.out, m.weight))


def _conv_sig(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1): ...


def conv_function(op: Op) -> Step:
    """F.conv2d with the weight from a parameter."""
    a = op.bind(_conv_sig)
    k, d = pair(tuple(a["weight"].shape[-2:])), pair(a["dilation"])
    w = Window(k, pair(a["stride"]), _conv_padding(a["padding"], k, d), d)
    return _windowed(op, w, _conv_macs(op.out, a["weight"]))


def pool_module(op: Op) -> Step:
    """nn.MaxPool2d and nn.AvgPool2d."""
    m = op.module
    k = pair(m.kernel_size)
    return _windowed(op, Window(k, pair(m.stride or k), pair(m.padding), pair(getattr(m, "dilation", 1))))


def _max_pool_sig(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False): ...


def _avg_pool_sig(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                  divisor_override=None): ...


def pool_function(signature: Callable) -> Rule:
    """F.max_pool2d / F.avg_pool2d, bound through `signature`."""

    def rule(op: Op) -> Step:
        a = op.bind(signature)
        k = pair(a["kernel_size"])
        return _windowed(op, Window(k, pair(a["stride"] or k), pair(a["padding"]), pair(a.get("dilation", 1))))

    return rule


def adaptive_pool(op: Op) -> Step:
    """Adaptive pools whose output size divides the input size; output 1 is a global pool."""
    g = _spatial_in(op)
    if g is None:
        return Step(None, row=True)
    w = adaptive_window(g.n, _hw(op.out))
    return Step(slide(g, w, _hw(op.out)), window=w, row=True)


def pad_module(op: Op) -> Step:
    """nn.ZeroPad2d, ConstantPad2d, ReflectionPad2d, ReplicationPad2d, CircularPad2d: (left, right, top, bottom)."""
    left, _, top, _ = op.module.padding
    return _windowed(op, Window((1, 1), (1, 1), (top, left)))


def _pad_sig(input, pad, mode="constant", value=None): ...


def pad_function(op: Op) -> Step:
    """F.pad of the last two axes: (left, right[, top, bottom])."""
    pad = tuple(op.bind(_pad_sig)["pad"])
    if len(pad) not in (2, 4):
        raise GeometryError(f"pads {len(pad) // 2} axes; only H and W have a rule")
    return _windowed(op, Window((1, 1), (1, 1), (pad[2] if len(pad) == 4 else 0, pad[0])))


# ---- layers that end or reduce the spatial map ----

def _linear_sig(input, weight, bias=None): ...


def linear(op: Op) -> Step:
    """nn.Linear / F.linear on features (after flatten or a global pool)."""
    weight = op.module.weight if op.module is not None else op.bind(_linear_sig)["weight"]
    if isinstance(op.first, Geom):
        raise GeometryError("applies along the width axis of a spatial map")
    return Step(op.first, macs=op.out[0].numel() * weight.shape[1], row=True)  # out features * in features


def reshape(op: Op) -> Step:
    """view, reshape, flatten, permute, ...: a spatial map that changes shape loses its (C, H, W) layout."""
    x = op.args[0]
    if isinstance(x, torch.Tensor) and tuple(op.out.shape) == tuple(x.shape):
        return Step(op.first)
    return Step(None if op.first is None else FLAT, row=op.first is not None)


def _reduce_sig(input, dim=None, keepdim=False, *args, **kwargs): ...


def reduce(op: Op) -> Step:
    """mean, sum, amax, amin: over both H and W it is a global pool; over channels it keeps positions."""
    a = op.bind(_reduce_sig)
    nd, g = a["input"].dim(), op.first
    dims = a["dim"]
    if isinstance(dims, int):
        dims = (dims,)
    dims = set(range(nd)) if dims is None or dims == () else {d % nd for d in dims}
    if not isinstance(g, Geom):
        return Step(g, row=g is not None)
    spatial = dims & {nd - 2, nd - 1}
    if spatial == {nd - 2, nd - 1}:
        w = Window(g.n, g.n, (0, 0))
        pooled = slide(g, w, (1, 1))
        if op.out.dim() == 4:
            return Step(pooled, window=w, row=True)
        return Step(FLAT, window=w, shown=pooled, row=True)
    if spatial:
        raise GeometryError("reduces over one spatial axis only")
    return Step(g if op.out.dim() == 4 else FLAT, row=True)


def _split_sig(input, size=None, dim=0, **kwargs): ...


def split(op: Op) -> Step:
    """chunk / split along channels; the pieces keep the field."""
    dim = op.bind(_split_sig)["dim"] % op.args[0].dim()
    if isinstance(op.first, Geom) and dim != 1:
        raise GeometryError(f"splits along dimension {dim}, not channels")
    return Step(op.first)


def getitem(op: Op) -> Step:
    """x[:, :16] (channel slices) or one piece of a chunk/split."""
    container = op.args[0]
    if isinstance(container, torch.Tensor) and isinstance(op.first, Geom):
        out, x = op.out, container
        if not (out.dim() == 4 and out.shape[-2:] == x.shape[-2:] and out.shape[0] == x.shape[0]):
            raise GeometryError("indexes into the spatial or batch axes")
    return Step(op.first)


# ---- registries ----

_POINTWISE_MODULES = (
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardsigmoid, nn.Hardswish, nn.Hardshrink, nn.Softshrink, nn.Tanhshrink,
    nn.Softplus, nn.Softsign, nn.LogSigmoid, nn.Threshold, nn.Softmax2d,
    # Norms count as pointwise: their statistics do span the map (GN, LN, IN), but by convention they are
    # not part of the receptive field, and in eval mode BN is a per-channel affine map.
    nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d,
    nn.LayerNorm, nn.RMSNorm, nn.LocalResponseNorm,
)

MODULE_RULES: dict[type, Rule] = {
    **{cls: pointwise for cls in _POINTWISE_MODULES},
    nn.Softmax: softmax, nn.LogSoftmax: softmax, nn.Softmin: softmax,
    nn.Conv2d: conv_module,
    nn.MaxPool2d: pool_module, nn.AvgPool2d: pool_module,
    nn.AdaptiveAvgPool2d: adaptive_pool, nn.AdaptiveMaxPool2d: adaptive_pool,
    nn.ZeroPad2d: pad_module, nn.ConstantPad2d: pad_module, nn.ReflectionPad2d: pad_module,
    nn.ReplicationPad2d: pad_module, nn.CircularPad2d: pad_module,
    nn.Linear: linear,
    nn.Flatten: reshape, nn.Unflatten: reshape,
}

_POINTWISE_FUNCTIONS = (
    operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.pow, operator.neg,
    operator.pos, operator.abs, operator.iadd, operator.isub, operator.imul, operator.itruediv,
    torch.add, torch.sub, torch.mul, torch.div, torch.maximum, torch.minimum, torch.where, torch.clamp, torch.clip,
    torch.abs, torch.exp, torch.log, torch.sqrt, torch.rsqrt, torch.square, torch.erf, torch.sigmoid, torch.tanh,
    torch.relu, torch.relu_, F.relu, F.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu,
    F.mish, F.hardswish, F.hardsigmoid, F.hardtanh, F.softplus, F.sigmoid, F.tanh, F.prelu,
    F.dropout, F.dropout1d, F.dropout2d, F.alpha_dropout,
    F.batch_norm, F.group_norm, F.layer_norm, F.instance_norm, F.rms_norm,
)

FUNCTION_RULES: dict[Callable, Rule] = {
    **{fn: pointwise for fn in _POINTWISE_FUNCTIONS},
    torch.cat: cat, torch.concat: cat, torch.concatenate: cat,
    F.softmax: softmax, F.log_softmax: softmax, torch.softmax: softmax, torch.log_softmax: softmax,
    torch.conv2d: conv_function,
    F.max_pool2d: pool_function(_max_pool_sig), torch.max_pool2d: pool_function(_max_pool_sig),
    F.avg_pool2d: pool_function(_avg_pool_sig),
    F.adaptive_avg_pool2d: adaptive_pool, F.adaptive_max_pool2d: adaptive_pool,
    F.pad: pad_function,
    F.linear: linear,
    torch.flatten: reshape, torch.reshape: reshape, torch.squeeze: reshape, torch.unsqueeze: reshape,
    torch.permute: reshape, torch.transpose: reshape, torch.movedim: reshape,
    torch.mean: reduce, torch.sum: reduce, torch.amax: reduce, torch.amin: reduce,
    torch.chunk: split, torch.split: split,
    operator.getitem: getitem,
}

METHOD_RULES: dict[str, Rule] = {
    **{name: pointwise for name in (
        "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "neg", "abs", "exp", "log", "sqrt", "pow",
        "clamp", "clamp_", "clip", "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "float", "double",
        "half", "bfloat16", "to", "type_as", "contiguous", "clone", "detach")},
    "softmax": softmax, "log_softmax": softmax,
    **{name: reshape for name in ("view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "permute",
                                  "transpose", "movedim", "expand", "expand_as", "view_as", "reshape_as")},
    **{name: reduce for name in ("mean", "sum", "amax", "amin")},
    "chunk": split, "split": split,
}


def rule_for(op_kind: str, target: Any, module: nn.Module | None) -> Rule | None:
    """The rule for a graph node (`op_kind` is fx's call_module / call_function / call_method), or None."""
    if op_kind == "call_module":
        return next((MODULE_RULES[c] for c in type(module).__mro__ if c in MODULE_RULES), None)
    if op_kind == "call_function":
        return FUNCTION_RULES.get(target)
    return METHOD_RULES.get(target)
