"""Sweep specs: a study spec's name, budget and defaults plus a `[search]` space, checked before anything runs.

The layout is `config.SweepFile` (see studies/tune/*.toml). `[search]` maps config paths to
`config.SearchParam` tables; TOML's dotted keys nest, so `train.optim.lr = { type = "float", ... }`
and `"train.optim.lr" = { ... }` mean the same. Every path must name one setting of a run
(`config.leaves(RunConfig)`) or an option of the spec's model, and every bound or choice must be a
valid value of that setting, so a bad space is a one-line error naming the key, not a failed trial.
Nothing here imports Optuna.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cifarlab.config import (Budget, CommonModelOptions, RunConfig, SearchParam, SettingError, SweepFile, SweepOptions,
                             check_field, from_dict, leaves, merge, nested, to_dict)
from cifarlab.errors import ConfigError

# Settings a sweep never varies, and why.
FIXED = {
    "data": "the data split is fixed for the whole sweep, so every trial is judged on the same validation images",
    "train.seed": "every trial trains with the spec's train.seed; --final-seeds retrains the winner with fresh seeds",
    "train.device": "the device does not change what a trial learns",
    "train.compile": "compilation does not change what a trial learns",
    "train.eval_batch_size": "the evaluation batch size does not change what a trial learns",
    "max_params": "the budget is the spec's [budget] table",
}
# Left out of the spec's digest: where the data lives and which device trains differ from machine to
# machine, and the trial count, sampler seed, heartbeat and final seeds may change between invocations
# (or differ between the workers) of one search.
_MACHINE = {("data", "root"), ("data", "download"), ("train", "device"), ("train", "compile")}
_PER_RUN_OPTIONS = ("trials", "seed", "heartbeat", "grace", "final_seeds")


@dataclass(frozen=True)
class SweepSpec:
    name: str
    description: str
    budget: Budget
    base: dict[str, Any]  # {"data": ..., "model": ..., "train": ...}: the spec's defaults, as written
    search: dict[str, SearchParam]  # config path -> distribution, in spec order
    options: SweepOptions
    path: Path
    text: str

    def config(self, values: dict[str, Any]) -> RunConfig:
        """The RunConfig of one point of the space (values by config path); SettingError when invalid."""
        merged = merge(self.base, nested(values))
        cfg = from_dict(RunConfig, {**merged, "max_params": self.budget.max_params})
        if self.budget.max_epochs is not None and cfg.train.epochs > self.budget.max_epochs:
            raise SettingError(("train", "epochs"), f"{cfg.train.epochs} epochs exceed the budget of "
                                                    f"{self.budget.max_epochs}")
        return cfg

    @property
    def digest(self) -> str:
        """sha256 of what defines the search (space, defaults, pruner), independent of layout and machine."""
        base = {k: {kk: vv for kk, vv in v.items() if (k, kk) not in _MACHINE} for k, v in self.base.items()}
        options = {k: v for k, v in to_dict(self.options).items() if k not in _PER_RUN_OPTIONS}
        body = {"base": base, "budget": to_dict(self.budget), "options": options,
                "search": {k: to_dict(v) for k, v in self.search.items()}}
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=list).encode()).hexdigest()


def top_epochs(search: dict[str, SearchParam], epochs: int) -> int:
    """The most epochs a trial trains: the top of a searched train.epochs, else `epochs` (the spec's)."""
    searched = search.get("train.epochs")
    if searched is None:
        return int(epochs)
    return int(searched.high if searched.type != "categorical" else max(searched.choices))


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, dict[str, Any]]:
    """{"train": {"optim": {"lr": {"type": ...}}}} -> {"train.optim.lr": {"type": ...}}."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in table.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and "type" in value:
            out[path] = value
        elif isinstance(value, dict) and value:
            out.update(_flatten(value, path + "."))
        else:
            raise SettingError(("search", path), f"expected a distribution such as "
                                                 f"{{ type = \"float\", low = 0.1, high = 1.0 }}, got {value!r}")
    return out


_SETTINGS = {".".join(path): (f, tp) for path, f, tp in leaves(RunConfig)}
_COMMON = {path[-1]: (f, tp) for path, f, tp in leaves(CommonModelOptions)}


def _setting(path: str, model: str) -> tuple[dataclasses.Field | None, Any]:
    """The field and type that config path `path` sets (field None: a model option without a declared type)."""
    parts = path.split(".")
    for fixed, why in FIXED.items():
        if path == fixed or path.startswith(fixed + "."):
            raise SettingError((), f"not searchable: {why}")
    if parts[:2] == ["model", "options"] and len(parts) == 3:
        from cifarlab.models import model_options

        accepted = model_options(model)
        if parts[2] not in accepted:
            raise SettingError((), f"model '{model}' has no option '{parts[2]}' (options: {', '.join(accepted)})")
        if parts[2] in _COMMON:
            return _COMMON[parts[2]]
        default = accepted[parts[2]]
        return None, type(default) if default is not None else Any
    if path in _SETTINGS:
        return _SETTINGS[path]
    if any(known.startswith(path + ".") for known in _SETTINGS) or path == "model.options":
        raise SettingError((), "is a table of settings, not one setting")
    close = difflib.get_close_matches(path, list(_SETTINGS), n=1)
    raise SettingError((), "not a setting" + (f" (did you mean {close[0]}?)" if close else ""))


def _check_param(path: str, param: SearchParam, model: str) -> None:
    """Refuse a distribution whose kind or values its setting cannot take; SettingError names the key."""
    f, tp = _setting(path, model)
    optional = typing.get_origin(tp) in (typing.Union, types.UnionType)
    base = next(a for a in typing.get_args(tp) if a is not type(None)) if optional else tp
    if param.type != "categorical":
        if base is bool or base is str or typing.get_origin(base) is Literal:
            raise SettingError(("type",), f"{path} takes {getattr(base, '__name__', 'one of fixed values')}: "
                                          "use type = \"categorical\" with choices")
        if base is int and param.type == "float":
            raise SettingError(("type",), f"{path} is a whole number: use type = \"int\"")
    values = {"choices": param.choices} if param.type == "categorical" else {"low": param.low, "high": param.high}
    for key, given in values.items():
        for i, value in enumerate(given if key == "choices" else [given]):
            if param.type == "int":
                value = int(value)
            where = (key, f"[{i}]") if key == "choices" else (key,)
            if f is None:  # a model option: its default's type is all that is declared
                if base is not Any and not isinstance(value, base) and not (base is float and isinstance(value, int)):
                    raise SettingError(where, f"expected {base.__name__}, got {value!r}")
                continue
            try:
                check_field(f, value, tp)
            except SettingError as exc:
                raise SettingError(where, exc.problem) from None


def load_sweep_spec(path: str | Path) -> SweepSpec:
    """Parse and fully validate a sweep spec; every problem names the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep spec '{path}' does not exist")
    return parse_sweep_spec(path.read_text(), path)


def parse_sweep_spec(text: str, path: Path) -> SweepSpec:
    """A sweep spec from its TOML text (e.g. the copy a search stores); `path` names it in errors."""
    try:
        raw = tomllib.loads(text)
        if "experiments" in raw:
            raise SettingError(("experiments",), "a sweep spec has [search], not [[experiments]] (that is a study "
                                                 "spec: cifarlab study)")
        spec = from_dict(SweepFile, raw)
        base = {k: getattr(spec, k) for k in ("data", "model", "train")}
        cfg = from_dict(RunConfig, {**base, "max_params": spec.budget.max_params})
        if cfg.data.val <= 0:
            raise SettingError(("data", "val"), "a sweep chooses on a validation split: set data.val > 0 "
                                                "(no trial ever reads the test set)")
        search = {}
        for key, table in _flatten(spec.search).items():
            try:
                search[key] = from_dict(SearchParam, table)
                _check_param(key, search[key], cfg.model.name)
            except SettingError as exc:
                raise exc.under("search", key) from None
        top = top_epochs(search, cfg.train.epochs)
        if spec.budget.max_epochs is not None and top > spec.budget.max_epochs:
            raise SettingError(("search", "train.epochs") if "train.epochs" in search else ("train", "epochs"),
                               f"{top} epochs exceed the budget of {spec.budget.max_epochs}")
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return SweepSpec(spec.name or path.stem, spec.description, spec.budget, base, search, spec.sweep, path, text)
