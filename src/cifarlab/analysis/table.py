"""`layer_table(model, input_shape)`: walk the real forward pass and tabulate every layer.

The model is traced with torch.fx, so functional calls inside `forward` (F.max_pool2d, `x + y`, torch.cat,
flatten) are layers like any module. One batch of zeros then runs through an fx Interpreter that records,
node by node, the real output shape and the geometry a rule in `rules.py` derives from the node's inputs.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch
from torch import fx, nn

from cifarlab.analysis.geometry import Geom, GeometryError, Pair, Window
from cifarlab.analysis.rules import MODULE_RULES, Op, Spatial, rule_for
from cifarlab.errors import CifarlabError
from cifarlab.layers import in_mode

_PROBE_BATCH = 2  # not 1: a stray x.squeeze() would also drop the batch axis and skew per-image counts
_BYTES_PER_VALUE = 4  # activations are counted as float32


class AnalysisError(CifarlabError):
    """The model cannot be traced or does not run on the requested input shape."""


class UnsupportedLayerError(AnalysisError):
    """A layer whose effect on the receptive field cannot be worked out; the message names it."""

    def __init__(self, layer: str, kind: str, reason: str) -> None:
        super().__init__(f"cannot analyse layer '{layer}' ({kind}): {reason}")
        self.layer, self.kind = layer, kind


@dataclass(frozen=True)
class LayerRow:
    """One layer of the forward pass. Spatial columns are (h, w) pairs; None where they do not apply."""

    name: str  # module path ('C1.0'), graph node name ('max_pool2d', 'add_1') or 'input'
    label: str  # what the tables show: the block name when a block holds one conv/pool ('C1')
    type: str  # module class or function name
    kernel: Pair | None
    stride: Pair | None
    padding: Pair | None  # leading (top, left) padding
    dilation: Pair | None
    n_in: Pair | None  # map size, units
    n_out: Pair | None
    j_in: Pair | None  # jump: input pixels between neighbouring units
    j_out: Pair | None
    r_in: Pair | None  # receptive field of one unit, input pixels
    r_out: Pair | None
    start_out: tuple[float, float] | None  # centre of the first output unit's field, in input pixels
    out_shape: tuple[int, ...]  # per image: (C, H, W), or (features,) after flatten
    params: int  # parameters first used by this layer (shared ones count once)
    macs: int  # multiply-accumulates per image (conv and linear only)


@dataclass(frozen=True)
class LayerTable:
    """Rows in forward order plus totals; parameter totals equal sum(p.numel()) over the model."""

    input_shape: tuple[int, int, int]  # (C, H, W)
    rows: list[LayerRow] = field(default_factory=list)
    trainable_params: int = 0
    non_trainable_params: int = 0
    macs: int = 0
    activation_bytes_per_image: int = 0  # float32 outputs of every layer; views and in-place results excluded

    def last_spatial(self) -> LayerRow:
        """The last row whose output is still a (C, H, W) map."""
        return [r for r in self.rows if r.n_out is not None][-1]

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, numbers, strings) for JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LayerTable":
        """The table `to_dict` wrote (JSON lists back to tuples); AnalysisError when it is not one."""
        try:
            names = {f.name for f in fields(LayerRow)}
            rows = [LayerRow(**{k: tuple(v) if isinstance(v, list) else v for k, v in r.items() if k in names})
                    for r in data["rows"]]
            return cls(tuple(data["input_shape"]), rows, int(data["trainable_params"]),
                       int(data["non_trainable_params"]), int(data["macs"]), int(data["activation_bytes_per_image"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise AnalysisError(f"not a layer table ({exc.__class__.__name__}: {exc})") from None


def layer_table(model: nn.Module, input_shape: tuple[int, int, int] = (3, 32, 32)) -> LayerTable:
    """Shapes, receptive fields, parameters and MACs of every layer of `model` on one (C, H, W) input."""
    if len(input_shape) != 3 or not all(isinstance(v, int) and v > 0 for v in input_shape):
        raise AnalysisError(f"input shape must be (C, H, W) with positive sizes, got {tuple(input_shape)}")
    try:
        graph = fx.GraphModule(model, _Tracer().trace(model))
    except Exception as exc:  # any failure inside a user's forward: report it, do not guess
        raise AnalysisError(f"cannot trace {type(model).__name__} with torch.fx ({_first_line(exc)}); "
                            "a forward without data-dependent control flow is needed") from exc
    ref = next(iter(model.parameters()), None)
    x = torch.zeros((_PROBE_BATCH, *input_shape), device=ref.device if ref is not None else None,
                    dtype=ref.dtype if ref is not None and ref.is_floating_point() else torch.float32)
    walker = _Walker(graph)
    try:
        # Eval mode: batch statistics would fail on 1x1 maps and update running stats; dropout would be random.
        with torch.no_grad(), in_mode(model):
            walker.run(x)
    except CifarlabError:
        raise
    except Exception as exc:
        raise AnalysisError(f"{type(model).__name__} does not run on input "
                            f"{'x'.join(map(str, input_shape))}: {_first_line(exc)}") from exc

    rows = walker.rows
    unused = sum(p.numel() for p in model.parameters() if id(p) not in walker.seen_params)
    if unused:  # never called in forward; listed so that the params column still adds up to the total
        rows.append(LayerRow("(unused)", "(unused)", "not called in forward", *[None] * 11, (), unused, 0))
    return LayerTable(
        input_shape=tuple(input_shape),
        rows=_with_labels(rows),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        non_trainable_params=sum(p.numel() for p in model.parameters() if not p.requires_grad),
        macs=sum(r.macs for r in rows),
        activation_bytes_per_image=walker.activation_values * _BYTES_PER_VALUE,
    )


class _Tracer(fx.Tracer):
    """fx's tracer, which also keeps subclasses of known layers whole (cifarlab.layers.LayerNorm2d, a user's
    `class MyConv(nn.Conv2d)`), so they get a row under their own class name instead of the functional
    calls inside them. Only when the subclass keeps its base's forward: one that overrides it is traced."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        base = next((c for c in type(m).__mro__ if c in MODULE_RULES), None)
        if base is not None and type(m).forward is base.forward:
            return True
        return super().is_leaf_module(m, qualname)


class _Walker(fx.Interpreter):
    """Runs the traced graph and turns each node into geometry and, where it changes something, a row."""

    def __init__(self, graph: fx.GraphModule) -> None:
        super().__init__(graph)
        self.extra_traceback = False  # keep our one-line errors as they are
        self.geom: dict[fx.Node, Spatial] = {}
        self.rows: list[LayerRow] = []
        self.seen_params: set[int] = set()
        self.activation_values = 0  # per image
        self.calls: Counter[str] = Counter()

    def run_node(self, n: fx.Node) -> Any:
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        out = super().run_node(n)
        self._record(n, args, kwargs, out)
        return out

    def _record(self, n: fx.Node, args: tuple, kwargs: dict, out: Any) -> None:
        self.geom[n] = None
        if n.op == "placeholder":
            if isinstance(out, torch.Tensor) and out.dim() == 4:
                g = Geom.input((out.shape[-2], out.shape[-1]))
                self.geom[n] = g
                self._add_row("input", "input", None, None, g, out, 0, 0)
            return
        if n.op in ("get_attr", "output"):
            return
        tensors = _tensors(out)
        if not tensors:  # shape arithmetic such as x.shape[0]
            return
        module = self.fetch_attr(n.target) if n.op == "call_module" else None
        params = self._new_params(n, module)
        inputs = n.all_input_nodes
        branches = [self.geom[m] for m in inputs if self.geom[m] is not None]
        name = n.target if module is not None else n.name
        kind = type(module).__name__ if module is not None else _function_name(n)
        if module is not None:
            self.calls[name] += 1
            name = name if self.calls[name] == 1 else f"{name}@{self.calls[name]}"
        if not branches:  # computed from parameters and constants only: no field to follow
            if params:
                self._add_row(name, kind, None, None, None, out, params, 0)
            return
        rule = rule_for(n.op, n.target, module)
        if rule is None:
            raise UnsupportedLayerError(name, kind, "no rule for its effect on the receptive field")
        try:
            step = rule(Op(args, kwargs, out, self.geom[inputs[0]], branches, module))
        except (GeometryError, TypeError) as exc:
            raise UnsupportedLayerError(name, kind, str(exc)) from None
        self.geom[n] = step.geom
        self.activation_values += _new_values(tensors, _tensors((args, kwargs)))
        x = next(iter(_tensors(args)), None)
        reshaped = isinstance(out, torch.Tensor) and x is not None and out.shape != x.shape
        if step.row or params or reshaped:
            g_in = branches[0] if len(branches) == 1 and not step.merged else None
            g_out = step.shown if step.shown is not None else step.geom
            self._add_row(name, kind, step.window, g_in if isinstance(g_in, Geom) else None,
                          g_out if isinstance(g_out, Geom) else None, out, params, step.macs)

    def _add_row(self, name: str, kind: str, w: Window | None, g_in: Geom | None, g_out: Geom | None, out: Any,
                 params: int, macs: int) -> None:
        window = (w.kernel, w.stride, w.padding, w.dilation) if w else (None,) * 4
        # n_in, n_out, j_in, j_out, r_in, r_out
        geometry = [getattr(g, key) if g else None for key in ("n", "j", "r") for g in (g_in, g_out)]
        self.rows.append(LayerRow(name, name, kind, *window, *geometry, g_out.start if g_out else None,
                                  tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else (), params, macs))

    def _new_params(self, n: fx.Node, module: nn.Module | None) -> int:
        if module is not None:
            found = list(module.parameters())
        else:  # parameters read in forward (F.conv2d(x, self.weight)) belong to the node that uses them
            found = [self.fetch_attr(m.target) for m in n.all_input_nodes if m.op == "get_attr"]
        new = [p for p in found if isinstance(p, nn.Parameter) and id(p) not in self.seen_params]
        self.seen_params.update(id(p) for p in new)
        return sum(p.numel() for p in new)


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def _new_values(outputs: list[torch.Tensor], inputs: list[torch.Tensor]) -> int:
    # Per image. An output sharing storage with an input (view, reshape, in-place ReLU) allocates nothing.
    shared = {t.untyped_storage().data_ptr() for t in inputs}
    return sum(t.numel() // _PROBE_BATCH for t in outputs if t.untyped_storage().data_ptr() not in shared)


def _function_name(n: fx.Node) -> str:
    return n.target if isinstance(n.target, str) else getattr(n.target, "__name__", str(n.target))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _with_labels(rows: list[LayerRow]) -> list[LayerRow]:
    # 'C1.0' reads 'C1' when Sequential block C1 holds one conv/pool/linear: the table then follows the
    # model's own diagram (C1 C2 c3 P1 ...), while norm rows keep their full path ('C1.2').
    def parent(r: LayerRow) -> str | None:
        head, _, last = r.name.rpartition(".")
        return head if head and last.isdigit() else None

    main = {id(r) for r in rows if r.kernel is not None or r.macs}
    counts = Counter(parent(r) for r in rows if id(r) in main)
    names = {r.name for r in rows}
    return [replace(r, label=p) if id(r) in main and p is not None and counts[p] == 1 and p not in names else r
            for r, p in ((r, parent(r)) for r in rows)]
