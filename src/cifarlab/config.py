"""Every setting, once: its type, default, allowed values or range, and help text.

The command-line flags (`cli/common.py`) and the study-spec parser (`study.py`) are built from
these dataclasses, and every instance checks itself when it is made, so a setting is one line here
plus the code that uses it. A run is fully described by `RunConfig`, which round-trips through
`to_dict` / `from_dict`, so a run folder reproduces itself from its `config.json`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from cifarlab.errors import ConfigError

Norm = Literal["bn", "gn", "ln", "none"]  # layers.norm_layer builds them; "none" only where a model allows it
NORMS = typing.get_args(Norm)
Augment = Literal["none", "flip", "crop"]  # crop = random translate (reflect-pad 4) + horizontal flip
Optimizer = Literal["sgd", "adam", "adamw"]  # optim.OPTIMIZERS implements each
Schedule = Literal["none", "step", "onecycle", "plateau", "linear"]  # optim.SCHEDULES implements each
Precision = Literal["auto", "bf16", "fp32"]
Compile = Literal["auto", "on", "off", "reduce-overhead", "max-autotune"]
Switch = Literal["auto", "on", "off"]

# Names the study folder uses for itself; a study or experiment may not take them.
RESERVED_NAMES = ("store.sqlite", "study.json", "report.html", "report.md", "report-files")


class SettingError(ConfigError):
    """A value that breaks its setting's type, choices or range; `path` names the setting."""

    def __init__(self, path: tuple[str, ...], problem: str) -> None:
        self.path, self.problem = path, problem
        super().__init__(f"{self.key}: {problem}" if path else problem)

    @property
    def key(self) -> str:
        """'train.optim.lr', 'experiments[2].name'."""
        return "".join(p if p.startswith("[") or i == 0 else f".{p}" for i, p in enumerate(self.path))

    def under(self, *prefix: str) -> "SettingError":
        return SettingError(tuple(p for p in prefix if p) + self.path, self.problem)


def setting(default: Any = dataclasses.MISSING, help: str = "", *, factory: Callable[[], Any] | None = None,
            ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None,
            check: Callable[[Any], str | None] | None = None, flag: str | None = None, metavar: str | None = None,
            group: str | None = None, cli: bool = True) -> Any:
    """A dataclass field with its help, bounds and CLI flag; `check(value)` returns a problem or None."""
    meta = {"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt, "check": check, "flag": flag,
            "metavar": metavar, "group": group, "cli": cli}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


_BOUNDS = {"ge": lambda v, b: v >= b, "gt": lambda v, b: v > b, "le": lambda v, b: v <= b, "lt": lambda v, b: v < b}


def bounds_text(meta: typing.Mapping[str, Any]) -> str:
    """'> 0', 'in [0, 1)' ... for messages and help texts; '' when unbounded."""
    lo = ("[", meta["ge"]) if meta.get("ge") is not None else ("(", meta["gt"]) if meta.get("gt") is not None else None
    hi = ("]", meta["le"]) if meta.get("le") is not None else (")", meta["lt"]) if meta.get("lt") is not None else None
    if lo and hi:
        return f"in {lo[0]}{lo[1]:g}, {hi[1]:g}{hi[0]}"
    if lo:
        return f"{'>=' if lo[0] == '[' else '>'} {lo[1]:g}"
    if hi:
        return f"{'<=' if hi[0] == ']' else '<'} {hi[1]:g}"
    return ""


def type_name(tp: Any) -> str:
    """'int', 'bn | gn | ln', 'int | None': a type as messages show it."""
    if typing.get_origin(tp) is Literal:
        return " | ".join(map(str, typing.get_args(tp)))
    return getattr(tp, "__name__", str(tp))


def check_value(value: Any, tp: Any) -> Any:
    """`value` as type `tp` (an int is fine where a float is expected, a bool never is); raise SettingError."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(tp)):
            return None
        problems = []
        for arg in args:
            try:
                return check_value(value, arg)
            except SettingError as exc:
                problems.append(exc)
        if len(args) > 1 and (isinstance(value, bool) or not isinstance(value, (int, float))):
            # `lr = "fast"`: name every alternative (a number's own problem, such as nan, is kept)
            raise SettingError((), f"expected {' or '.join(_alternative(a) for a in args)}, got {value!r}")
        raise problems[0]
    if origin is Literal:
        if isinstance(value, str) and value in typing.get_args(tp):
            return value
        raise SettingError((), f"unknown value {value!r} (choose from {', '.join(typing.get_args(tp))})")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise SettingError((), f"expected a table, got {value!r}")
        return from_dict(tp, value)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise SettingError((), f"expected a list, got {value!r}")
        (item,) = typing.get_args(tp)[:1]
        out = []
        for i, v in enumerate(value):
            try:
                out.append(check_value(v, item))
            except SettingError as exc:
                raise exc.under(f"[{i}]") from None
        return tuple(out)
    if origin is dict or tp is dict:
        if isinstance(value, dict):
            return dict(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
            if not math.isfinite(value):
                raise SettingError((), f"must be a finite number, got {value}")
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp in (bool, str):
        if isinstance(value, tp):
            return value
    elif tp is Any:
        return value
    raise SettingError((), f"expected {type_name(tp)}, got {value!r}")


def _alternative(tp: Any) -> str:
    """'a number', "'auto'": one type of a union, as an error message names it."""
    if typing.get_origin(tp) is Literal:
        return " or ".join(repr(v) for v in typing.get_args(tp))
    return "a number" if tp in (int, float) else type_name(tp)


def check_field(f: dataclasses.Field, value: Any, tp: Any) -> Any:
    """Type, bounds and custom check of one field's value; SettingError names the field."""
    try:
        value = check_value(value, tp)
        if value is not None and not isinstance(value, bool) and isinstance(value, (int, float)):
            for key, ok in _BOUNDS.items():
                bound = f.metadata.get(key)
                if bound is not None and not ok(value, bound):
                    raise SettingError((), f"must be {bounds_text(f.metadata)}, got {value:g}")
        check = f.metadata.get("check")
        problem = check(value) if check is not None and value is not None else None
        if problem:
            raise SettingError((), problem)
        return value
    except SettingError as exc:
        raise exc.under(f.name) from None


class Settings:
    """Base of every config dataclass: an instance checks its fields, then `problems()`, when made."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            object.__setattr__(self, f.name, check_field(f, getattr(self, f.name), hints[f.name]))
        for name, problem in self.problems():
            raise SettingError((name,), problem)

    def problems(self) -> typing.Iterator[tuple[str, str]]:
        """(field, problem) for settings that depend on each other; none by default."""
        return iter(())


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass `cls` from a dict (JSON, TOML); errors name the key, under `where`."""
    try:
        known = {f.name: f for f in dataclasses.fields(cls)}
        for key in data:
            if key not in known:
                raise SettingError((key,), f"unknown key (known: {', '.join(known)})")
        for name, f in known.items():
            if name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise SettingError((name,), "missing")
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for key, value in data.items():
            if dataclasses.is_dataclass(hints[key]) and isinstance(value, dict):
                try:  # nested tables are built first so their errors carry their own path
                    value = from_dict(hints[key], value)
                except SettingError as exc:
                    raise exc.under(key) from None
            kwargs[key] = value
        return cls(**kwargs)
    except SettingError as exc:
        raise exc.under(*where.split(".")) if where else exc from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass."""
    return dataclasses.asdict(cfg)


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge two config dicts: tables merge key by key (model options too), other values are replaced."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def nested(pairs: dict[str, Any]) -> dict[str, Any]:
    """{'train.optim.lr': 0.2, 'train.epochs': 5} -> {'train': {'optim': {'lr': 0.2}, 'epochs': 5}}."""
    out: dict[str, Any] = {}
    for key, value in pairs.items():
        *parents, last = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return out


def comparable(cfg: dict[str, Any]) -> dict[str, Any]:
    """A recorded run config as it must match today's to count as the same run: read through the config
    classes (a setting added since takes its default, which reproduces the old behaviour), without the
    device it ran on or where its model file lay (the file's sha256 is compared)."""
    try:
        cfg = to_dict(from_dict(RunConfig, {k: v for k, v in cfg.items() if k != "version"}))
    except ConfigError:  # a setting this version no longer knows: compare as recorded
        cfg = {k: v for k, v in cfg.items() if k != "version"}
    source = {k: None for k in ("path", "root")} if cfg.get("model", {}).get("source") else {}
    return merge(cfg, {"train": {"device": None}, "model": {"source": source}})


def setting_changes(before: Any, after: Any, prefix: str = "") -> list[str]:
    """'train.optim.lr: 0.4 -> 0.2' for each setting whose value differs between two config dicts."""
    if isinstance(before, dict) and isinstance(after, dict):
        out = []
        for key in [*before, *(k for k in after if k not in before)]:
            out += setting_changes(before.get(key, "(unset)"), after.get(key, "(unset)"),
                                   f"{prefix}.{key}" if prefix else str(key))
        return out
    if before == after and type(before) is type(after):
        return []
    show = lambda v: v if isinstance(v, str) and v == "(unset)" else json.dumps(v)  # noqa: E731
    return [f"{prefix}: {show(before)} -> {show(after)}"]


def leaves(cls: type, prefix: tuple[str, ...] = ()) -> typing.Iterator[tuple[tuple[str, ...], dataclasses.Field, Any]]:
    """(path, field, type) of every non-table setting under dataclass `cls`, in declaration order."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from leaves(hints[f.name], prefix + (f.name,))
        else:
            yield prefix + (f.name,), f, hints[f.name]


def folder_name_problem(name: str) -> str | None:
    """Why `name` cannot be one folder inside a study folder, or None when it can."""
    if not name or name in (".", ".."):
        return f"'{name}' is not usable as a folder name"
    if "/" in name or "\\" in name or name.startswith(".") or name.startswith("~"):
        return f"'{name}' is not usable as a folder name (no path separators, no leading '.' or '~')"
    # Cc/Cf/Zl/Zp/Cs: control and invisible format characters (NUL, ESC, U+202E, ...) and surrogates.
    if any(ord(c) == 127 or unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs") for c in name):
        return f"{name!r} is not usable as a folder name (control characters)"
    if name != name.strip():
        return f"{name!r} is not usable as a folder name (leading or trailing white space)"
    if len(name.encode()) > 100:
        return f"'{name[:20]}...' is too long for a folder name ({len(name.encode())} bytes, at most 100)"
    if name.lower() in RESERVED_NAMES or name.endswith((".incomplete", ".lock")):
        return f"'{name}' is a name the study folder uses for itself"
    return None


def _device_problem(name: str) -> str | None:
    ok = re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", name)
    return None if ok else f"unknown device '{name}' (auto, cpu, cuda, cuda:N, mps)"


# ---------------------------------------------------------------------------------------------
# A run


@dataclass(frozen=True)
class DataConfig(Settings):
    root: str | None = setting(None, "CIFAR-10 folder (default: $CIFARLAB_DATA, then ./data)", flag="--data",
                               metavar="DIR", group="data")
    download: bool = setting(False, "download CIFAR-10 into ./data if it is not found (needs torchvision)",
                             group="data")
    val: int = setting(0, "hold out N training images (seeded, stratified) for validation", ge=0, metavar="N",
                       group="data")
    subset: int = setting(0, "train on N images only (0 = all); for quick runs", ge=0, metavar="N", group="data")
    split_seed: int = setting(0, "fixes which images form the validation split and subset, apart from --seed",
                              ge=0, group="data")


# Model options that have flags of their own; a model takes them only if its factory has them.
@dataclass(frozen=True)
class CommonModelOptions(Settings):
    norm: Norm | None = setting(None, "normalisation; default: the model's", group="model")
    groups: int | None = setting(None, "GroupNorm group count, with --norm gn; default: the model's", ge=1,
                                 group="model")
    dropout: float | None = setting(None, "dropout probability; default: the model's", ge=0, lt=1, group="model")


# The ranges of the options single models take (-O KEY=VALUE, a spec's `options`); an option name
# means the same in every model that takes it. No flags of their own.
@dataclass(frozen=True)
class ModelOptionRanges(Settings):
    width: int | None = setting(None, "s8-net: channels of its widest layers", ge=2, cli=False)
    stem: int | None = setting(None, "budget-net: stem channels", ge=1, cli=False)
    w1: int | None = setting(None, "budget-net: channels of stage 1", ge=1, cli=False)
    w2: int | None = setting(None, "budget-net: channels of stage 2", ge=1, cli=False)
    w3: int | None = setting(None, "budget-net: channels of stage 3", ge=1, cli=False)
    logit_scale: float | None = setting(None, "budget-net: factor on the logits", gt=0, cli=False)
    dense_units: int | None = setting(None, "keras-cnn: units of the hidden dense layer", ge=1, cli=False)
    dropout_conv: float | None = setting(None, "keras-cnn: dropout after each conv block", ge=0, lt=1, cli=False)
    dropout_dense: float | None = setting(None, "keras-cnn: dropout before the last layer", ge=0, lt=1, cli=False)


def check_model_options(options: dict[str, Any], registry: bool = True) -> None:
    """Range-check model options (CommonModelOptions, and ModelOptionRanges for `registry` models; any
    number must be finite). A user's model file may mean something else by `width`, so only the shared
    options bind it.

    Raises SettingError whose path is the option's name. Which options a model takes is the
    registry's business (models.create_model).
    """
    for key, value in options.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise SettingError((key,), f"must be a finite number, got {value}")
    CommonModelOptions(**{k: v for k, v in options.items() if k in CommonModelOptions.__dataclass_fields__})
    # Ranges only: an option of the wrong type gets the registry's message, which knows the model.
    numbers = {k: v for k, v in options.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if registry:
        ModelOptionRanges(**{k: v for k, v in numbers.items() if k in ModelOptionRanges.__dataclass_fields__})


@dataclass(frozen=True)
class ModelConfig(Settings):
    name: str = setting("s8-net", "a model from `cifarlab models`, or your own: FILE.py:NAME or package.module:NAME",
                        flag="--model", metavar="NAME", group="model")
    options: dict[str, Any] = setting(factory=dict, help="passed to the model factory", cli=False)
    # Filled in by cifarlab (models.external.resolve), never by hand: so a run records which file it trained.
    source: dict[str, Any] = setting(factory=dict, help="a FILE.py:NAME model's resolved path, object name and "
                                     "sha256 (module models: also the module and the folder it was found from)",
                                     cli=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        try:  # option ranges hold in specs too, not only on the command line
            check_model_options(self.options, registry=":" not in self.name)
        except SettingError as exc:
            raise exc.under("options") from None


@dataclass(frozen=True)
class OptimConfig(Settings):
    # Defaults: the reference "modern recipe" for <= 50k-parameter nets (Nesterov SGD, linear
    # warm-up/decay, decay 5e-4 on kernels) at batch 256; see BENCHMARKS.md for what it reaches.
    name: Optimizer = setting("sgd", "optimiser", flag="--optimizer", group="optimisation")
    # "auto": train.train runs the range test (lrfind.py) on the training split first and trains at its
    # suggestion; config.json keeps "auto", history.json's meta the lr used (so a resumed study still
    # matches its finished runs, whatever lr the test found for them).
    lr: float | Literal["auto"] = setting(0.4, "peak learning rate, or auto: the learning-rate range test's "
                                          "suggestion (`cifarlab lr-find`), run on the training split first",
                                          gt=0, metavar="X|auto", group="optimisation")
    momentum: float = setting(0.9, "SGD momentum; Adam beta1", ge=0, lt=1, group="optimisation")
    nesterov: bool = setting(True, "Nesterov momentum (SGD)", group="optimisation")
    weight_decay: float = setting(5e-4, "optimiser decay of conv/linear kernels (AdamW: decoupled)", ge=0,
                                  group="optimisation")
    schedule: Schedule = setting("linear", "learning-rate schedule", group="optimisation")
    step_epochs: int = setting(10, "step: epochs between lr decays", ge=1, group="optimisation")
    gamma: float = setting(0.1, "step and plateau: lr factor", gt=0, lt=1, group="optimisation")
    patience: int = setting(2, "plateau: epochs without improvement of the monitored loss", ge=0,
                            group="optimisation")
    warmup: float = setting(0.2, "linear/onecycle: fraction of all steps spent rising to the peak", ge=0, le=1,
                            group="optimisation")
    final_lr: float = setting(0.0, "linear: lr at the last step, as a fraction of the peak", ge=0, le=1,
                              group="optimisation")
    norm_lr_scale: float = setting(1.0, "lr multiplier for biases and norm parameters (never decayed)", gt=0,
                                   group="optimisation")

    def problems(self):
        if self.nesterov and self.momentum <= 0:
            yield "nesterov", "nesterov needs momentum > 0"


@dataclass(frozen=True)
class LRFindConfig(Settings):
    """The learning-rate range test (`cifarlab lr-find`, and `--lr auto` before training)."""

    start_lr: float = setting(1e-4, "learning rate of the first step", gt=0, metavar="X", group="range test")
    end_lr: float = setting(10.0, "learning rate of the last step (the ramp is exponential)", gt=0, metavar="X",
                            group="range test")
    # 300 steps at batch 256 see 77k images (1.5 epochs of CIFAR-10) over 5 decades: ~60 steps per decade.
    steps: int = setting(300, "optimiser steps from start to end; the test stops early when the loss diverges",
                         ge=10, metavar="N", group="range test")

    def problems(self):
        if self.end_lr <= self.start_lr:
            yield "end_lr", f"must be above start_lr ({self.start_lr:g}), got {self.end_lr:g}"


@dataclass(frozen=True)
class RegConfig(Settings):
    # Keras `kernel_regularizer` semantics: lambda * sum(|w|) or lambda * sum(w^2) over the kernels
    # of one layer group, added to the loss. Biases and norm parameters are never penalised.
    l1_conv: float = setting(0.0, "L1 penalty on conv kernels (Keras semantics)", ge=0, metavar="LAMBDA",
                             group="regularisation")
    l1_dense: float = setting(0.0, "L1 penalty on dense kernels", ge=0, metavar="LAMBDA", group="regularisation")
    l2_conv: float = setting(0.0, "L2 penalty on conv kernels", ge=0, metavar="LAMBDA", group="regularisation")
    l2_dense: float = setting(0.0, "L2 penalty on dense kernels", ge=0, metavar="LAMBDA", group="regularisation")
    label_smoothing: float = setting(0.1, "label smoothing", ge=0, lt=1, group="regularisation")


@dataclass(frozen=True)
class TrainConfig(Settings):
    epochs: int = setting(20, "epochs to train", ge=1, group="optimisation")
    batch_size: int = setting(256, "training batch size", ge=1, group="optimisation")
    seed: int = setting(0, "run seed (model init, data order, augmentation)", ge=0, group="run")
    augment: Augment = setting("crop", "training augmentation (crop = reflect-pad 4 + random crop + flip)",
                               group="data")
    alt_flip: bool = setting(False, "mirror each image in every other epoch (from a random start) instead of "
                                    "at random", group="data")
    optim: OptimConfig = setting(factory=OptimConfig)
    reg: RegConfig = setting(factory=RegConfig)
    device: str = setting("auto", "auto (cuda when available) | cpu | cuda | cuda:N", check=_device_problem,
                          metavar="DEVICE", group="run")
    precision: Precision = setting("auto", "auto = bf16 autocast on CUDA, fp32 on CPU", group="run")
    # auto = off, also on CUDA: on an H100 (bench/results/2026-11-27-h100-step) inductor saved 0.4 s of a
    # 3.4 s captured budget-net run and cost 3.5 s of compile with a warm cache (~30 s cold); uncaptured,
    # compiled training was slower than eager (15.8 s against 12.6 s).
    compile: Compile = setting("auto", "torch.compile mode; auto = off (measured slower in total for these "
                                       "small nets, see BENCHMARKS.md)", group="run")
    # auto = on with CUDA: the captured step took budget-net from 12.6 s (eager) to 3.1 s of training on an
    # H100 with the same accuracy (bench/results/2026-11-27-h100-step). On a CPU there is nothing to
    # capture; "on" there warns and trains uncaptured.
    cuda_graph: Switch = setting("auto", "capture the whole training step (forward, backward, update, EMA, "
                                         "metrics) as one CUDA graph; auto = on with CUDA", group="run")
    tta: bool = setting(False, "also report flip test-time-augmented accuracy (and 6 views at the end)",
                        group="run")
    ema: float = setting(0.0, "weight EMA decay per step (0 = off); evaluation then uses the EMA weights",
                         ge=0, lt=1, group="regularisation")
    eval_batch_size: int = setting(2000, "evaluation batch size", ge=1, group="run")

    def problems(self):
        if self.alt_flip and self.augment == "none":
            yield "alt_flip", "alt_flip needs augment flip or crop (augment is 'none')"


@dataclass(frozen=True)
class RunConfig(Settings):
    data: DataConfig = setting(factory=DataConfig)
    model: ModelConfig = setting(factory=ModelConfig)
    train: TrainConfig = setting(factory=TrainConfig)
    max_params: int | None = setting(None, "refuse a model with more trainable parameters", gt=0, metavar="N",
                                     group="run")


# ---------------------------------------------------------------------------------------------
# A study spec file (TOML): defaults for every run, then experiments that override them key by key


@dataclass(frozen=True)
class Budget(Settings):
    max_params: int | None = setting(None, "most trainable parameters a model may have", gt=0)
    max_epochs: int | None = setting(None, "most epochs a run may train", gt=0)


@dataclass(frozen=True)
class ExperimentEntry(Settings):
    name: str = setting(help="experiment name (a folder of the study)", check=folder_name_problem)
    description: str = setting("", "one line shown in the report")
    baseline: bool = setting(False, "the experiment the others are compared with")
    data: dict[str, Any] = setting(factory=dict, help="overrides of the study's [data] table")
    model: dict[str, Any] = setting(factory=dict, help="overrides of the study's [model] table")
    train: dict[str, Any] = setting(factory=dict, help="overrides of the study's [train] table")


@dataclass(frozen=True)
class SpecFile(Settings):
    name: str | None = setting(None, "study name (default: the file's name); the folder runs/<name>",
                               check=folder_name_problem)
    description: str = setting("", "one line shown in the report")
    seeds: int = setting(1, "seeds per experiment", ge=1)
    # auto = on with CUDA, where K stacked seeds fill a GPU that one 50k-parameter net leaves mostly idle;
    # off on a CPU, where vmap's grouped convolutions made 3 seeds take 2.5x as long as one after another
    # (2-core CPU, budget-net, 2026-12). BENCHMARKS.md has the GPU measurement behind the default.
    seeds_together: Switch = setting("auto", "train an experiment's seeds as one batched computation in one "
                                             "process, each seed still its own run; auto = on with CUDA",
                                     flag="--seeds-together")
    budget: Budget = setting(factory=Budget)
    data: dict[str, Any] = setting(factory=dict, help="DataConfig defaults for every experiment")
    model: dict[str, Any] = setting(factory=dict, help="ModelConfig defaults for every experiment")
    train: dict[str, Any] = setting(factory=dict, help="TrainConfig defaults for every experiment")
    experiments: tuple[ExperimentEntry, ...] = setting(factory=tuple, help="the experiments, in report order")

    def problems(self):
        names = [e.name for e in self.experiments]
        if not names:
            yield "experiments", "the study lists no experiments"
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            yield "experiments", f"experiment '{twice[0]}' appears twice"
        if sum(e.baseline for e in self.experiments) > 1:
            yield "experiments", "more than one experiment says baseline = true"


# ---------------------------------------------------------------------------------------------
# A sweep spec (TOML): a study spec's name, budget and data/model/train defaults, then the search
# space in [search] (config path -> distribution) and the search's own options in [sweep]

SearchKind = Literal["float", "int", "categorical"]
Pruner = Literal["median", "hyperband", "none"]
CHOICE_TYPES = (bool, int, float, str)  # what Optuna's CategoricalDistribution stores


@dataclass(frozen=True)
class SearchParam(Settings):
    """One searched setting: `{ type = "float", low = 0.05, high = 1.0, log = true }` and the like."""

    type: SearchKind = setting(help="float (uniform, or log-uniform with log = true), int, or categorical")
    low: float | None = setting(None, "float and int: the lowest value")
    high: float | None = setting(None, "float and int: the highest value (inclusive)")
    log: bool = setting(False, "float and int: sample on a log scale (needs low > 0)")
    step: float | None = setting(None, "int (default 1) or float: spacing of the values from low", gt=0)
    choices: tuple[Any, ...] | None = setting(None, "categorical: the values to choose from")

    def problems(self):
        if self.type == "categorical":
            if not self.choices:
                yield "choices", "a categorical parameter needs choices = [...]"
            for value in self.choices or ():
                if value is not None and not isinstance(value, CHOICE_TYPES):
                    yield "choices", f"{value!r}: choices must be numbers, strings or booleans"
            for key in ("low", "high", "step"):
                if getattr(self, key) is not None:
                    yield key, "not used by a categorical parameter (give choices)"
            return
        if self.choices is not None:
            yield "choices", f"only categorical parameters take choices (this one is {self.type})"
        for key in ("low", "high"):
            if getattr(self, key) is None:
                yield key, f"missing (a {self.type} parameter needs low and high)"
        if self.low is None or self.high is None:
            return
        if self.type == "int":
            for key in ("low", "high", "step"):
                value = getattr(self, key)
                if value is not None and not float(value).is_integer():
                    yield key, f"must be a whole number for an int parameter, got {value:g}"
        if self.low > self.high:
            yield "high", f"must be >= low ({self.low:g}), got {self.high:g}"
        if self.log and self.low <= 0:
            yield "low", f"must be > 0 with log = true, got {self.low:g}"
        if self.log and self.step is not None:
            yield "step", "cannot be combined with log = true"


@dataclass(frozen=True)
class SweepOptions(Settings):
    trials: int = setting(20, "trials in the whole search (every worker, every invocation); --trials", ge=1)
    seed: int = setting(0, "TPE sampler seed (trial n draws with seed + n); --seed", ge=0)
    random_trials: int = setting(8, "TPE: trials drawn at random before TPE models the results", ge=1)
    pruner: Pruner = setting("median", "stops hopeless trials early on their per-epoch validation accuracy")
    startup_trials: int = setting(4, "median: trials that finish before any is pruned", ge=0)
    warmup_epochs: int = setting(1, "median: epochs every trial trains before it may be pruned", ge=0)
    min_epochs: int = setting(1, "hyperband: epochs of the smallest bracket", ge=1)
    reduction_factor: int = setting(3, "hyperband: 1/fraction of trials promoted at each rung", ge=2)
    heartbeat: int = setting(10, "PostgreSQL or Redis storage: seconds between a running trial's heartbeats", ge=1)
    grace: int = setting(60, "PostgreSQL or Redis storage: seconds without a heartbeat before a trial counts "
                             "as dead and is retried", ge=1)
    final_seeds: int = setting(0, "retrain the winner on all training images with this many fresh seeds "
                                  "and report its test accuracy; --final-seeds", ge=0)


@dataclass(frozen=True)
class SweepFile(Settings):
    name: str | None = setting(None, "sweep name (default: the file's name); the folder runs/<name>",
                               check=folder_name_problem)
    description: str = setting("", "one line shown in the report")
    budget: Budget = setting(factory=Budget)
    data: dict[str, Any] = setting(factory=dict, help="DataConfig of every trial (data.val > 0 is required)")
    model: dict[str, Any] = setting(factory=dict, help="ModelConfig defaults of every trial")
    train: dict[str, Any] = setting(factory=dict, help="TrainConfig defaults of every trial")
    sweep: SweepOptions = setting(factory=SweepOptions)
    search: dict[str, Any] = setting(factory=dict, help="config path -> SearchParam table")

    def problems(self):
        if not self.search:
            yield "search", "the sweep searches nothing (add e.g. train.optim.lr = { type = \"float\", ... })"
