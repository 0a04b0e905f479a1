"""Typed, frozen configuration. Defaults live here; unknown keys and wrong types are errors.

A run is fully described by `RunConfig` (data + model + training), which round-trips through
`to_dict` / `run_config_from_dict` so a run directory can reproduce itself from `config.json`.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from cifarlab.errors import ConfigError

AUGMENTS = ("none", "flip", "crop")  # crop = random translate (reflect-pad 4) + horizontal flip
COMPILE_CHOICES = ("auto", "on", "off", "reduce-overhead", "max-autotune")


@dataclass(frozen=True)
class DataConfig:
    root: str | None = None  # None: $CIFARLAB_DATA, then ./data
    download: bool = False
    val: int = 0  # training images held out for validation (seeded, stratified)
    subset: int = 0  # train on this many images only (0 = all); for quick CPU runs and tests
    split_seed: int = 0  # fixes which images form the validation split / subset, apart from the run seed


@dataclass(frozen=True)
class ModelConfig:
    name: str = "s8-net"
    options: dict[str, Any] = field(default_factory=dict)  # passed to the model factory


@dataclass(frozen=True)
class OptimConfig:
    # Defaults: the reference "modern recipe" for <= 50k-parameter nets (Nesterov SGD, linear
    # warm-up/decay, decay 5e-4 on kernels) at batch 256; see BENCHMARKS.md for what it reaches.
    name: str = "sgd"  # sgd | adam | adamw
    lr: float = 0.4  # peak learning rate (for batch 256)
    momentum: float = 0.9  # SGD momentum; Adam beta1
    nesterov: bool = True
    weight_decay: float = 5e-4  # optimiser decay on conv/linear kernels only (AdamW: decoupled)
    schedule: str = "linear"  # none | step | onecycle | plateau | linear
    step_epochs: int = 10  # step: multiply lr by gamma every step_epochs
    gamma: float = 0.1  # step and plateau factor
    patience: int = 2  # plateau: epochs without improvement of the monitored loss
    warmup: float = 0.2  # linear/onecycle: fraction of all steps spent rising to the peak
    final_lr: float = 0.0  # linear: lr at the last step, as a fraction of the peak
    norm_lr_scale: float = 1.0  # lr multiplier for biases and norm parameters (never decayed)


@dataclass(frozen=True)
class RegConfig:
    # Keras `kernel_regularizer` semantics: lambda * sum(|w|) or lambda * sum(w^2) over the kernels
    # of one layer group, added to the loss. Biases and norm parameters are never penalised.
    l1_conv: float = 0.0
    l1_dense: float = 0.0
    l2_conv: float = 0.0
    l2_dense: float = 0.0
    label_smoothing: float = 0.1


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    batch_size: int = 256
    seed: int = 0
    augment: str = "crop"  # none | flip | crop
    alt_flip: bool = False  # mirror each image in every other epoch instead of at random
    optim: OptimConfig = field(default_factory=OptimConfig)
    reg: RegConfig = field(default_factory=RegConfig)
    device: str = "auto"  # auto (cuda when available) | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 autocast on cuda, fp32 on cpu) | bf16 | fp32
    compile: str = "auto"  # auto (on for cuda) | on | off | reduce-overhead | max-autotune
    # auto | on | off: capture the whole training step as one CUDA graph (issue 11). auto = off until
    # the H100 measures compile + training time per mode; on a CPU, "on" warns and runs uncaptured.
    cuda_graph: str = "auto"
    tta: bool = False  # also report test accuracy with horizontal-flip test-time augmentation
    ema: float = 0.0  # weight EMA decay per step (0 = off); evaluation then uses the EMA weights
    eval_batch_size: int = 2000


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    max_params: int | None = None


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass."""
    return dataclasses.asdict(cfg)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _check_value(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_value(value, arg, where)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return from_dict(tp, value, where)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    if tp is float:
        # ints are fine where floats are expected (lr = 1), bools are not.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Any:
        return value
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """Build dataclass `cls` from a dict, naming the unknown key or wrong type in `where.key`."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            raise ConfigError(f"{where}: unknown key '{key}' (known: {', '.join(sorted(known))})")
    kwargs = {key: _check_value(value, hints[key], f"{where}.{key}") for key, value in data.items()}
    return cls(**kwargs)


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge two config dicts; tables merge key by key, other values are replaced."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "options":
            out[key] = merge(out[key], value)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def validate(cfg: RunConfig) -> RunConfig:
    """Check value ranges that types alone cannot; raise ConfigError naming the field."""
    t, o, d = cfg.train, cfg.train.optim, cfg.data
    checks = [
        (t.epochs > 0, f"epochs must be > 0, got {t.epochs}"),
        (t.batch_size > 0, f"batch size must be > 0, got {t.batch_size}"),
        (t.augment in AUGMENTS, f"unknown augment '{t.augment}' (choose from {', '.join(AUGMENTS)})"),
        (not t.alt_flip or t.augment != "none", "alt_flip needs augment flip or crop (augment is 'none')"),
        (o.lr > 0, f"learning rate must be > 0, got {o.lr}"),
        (o.norm_lr_scale > 0, f"norm lr scale must be > 0, got {o.norm_lr_scale}"),
        (t.precision in ("auto", "bf16", "fp32"), f"unknown precision '{t.precision}' (auto, bf16, fp32)"),
        (t.compile in COMPILE_CHOICES, f"unknown compile mode '{t.compile}' ({', '.join(COMPILE_CHOICES)})"),
        (0.0 <= t.ema < 1.0, f"ema must be in [0, 1), got {t.ema}"),
        (d.val >= 0, f"val must be >= 0, got {d.val}"),
        (d.subset >= 0, f"subset must be >= 0, got {d.subset}"),
        (0.0 <= cfg.train.reg.label_smoothing < 1.0, "label smoothing must be in [0, 1)"),
        (cfg.max_params is None or cfg.max_params > 0, f"max params must be > 0, got {cfg.max_params}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    return cfg
