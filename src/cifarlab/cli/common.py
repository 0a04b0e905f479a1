"""Command-line flags built from the config dataclasses, and their translation back into a RunConfig.

Each flag's type, choices, default and help come from its field in `cifarlab.config`; nothing here
restates them. A flag left out keeps the config default (argparse.SUPPRESS), so the dataclass is
the one place a default lives.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from typing import Any, Literal

from cifarlab.config import (CommonModelOptions, ModelConfig, RunConfig, SettingError, bounds_text, from_dict, leaves,
                             nested)
from cifarlab.errors import ConfigError

GROUPS = ("model", "data", "optimisation", "regularisation", "run")
_RUN = "cfg:"  # dest prefix of the flags that map onto RunConfig fields
_OPTION = "opt:"  # dest prefix of the flags that map onto model options (--norm, --groups, --dropout)


def parse_value(text: str) -> Any:
    """'3' -> 3, '0.5' -> 0.5, 'true' -> True, anything else stays a string."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _number_or_text(text: str) -> float | str:
    """'0.4' -> 0.4, 'nan' -> nan (refused by the config, as --lr nan always was), 'auto' -> 'auto'."""
    try:
        return float(text)
    except ValueError:
        return text


def _integer(text: str, low: int, bound: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _integer(text, 1, "> 0")


def non_negative_int(text: str) -> int:
    return _integer(text, 0, ">= 0")


def _flag(path: tuple[str, ...], f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + path[-1].replace("_", "-")


def _help(f: dataclasses.Field, default: Any) -> str:
    extras = [f"default: {default}"] if default is not None and default is not False and default != "" else []
    if bounds_text(f.metadata):
        extras.append(bounds_text(f.metadata))
    text = f.metadata.get("help", "")
    return f"{text} ({'; '.join(extras)})" if extras else text


def _argument(group, dest: str, flag: str, f: dataclasses.Field, tp: Any, default: Any) -> None:
    optional = typing.get_origin(tp) in (types.UnionType, typing.Union)
    alternatives = [a for a in typing.get_args(tp) if a is not type(None)] if optional else [tp]
    base = alternatives[0]
    kwargs: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS, "help": _help(f, default)}
    if len(alternatives) > 1:  # `float | Literal["auto"]` (--lr): the config checks the value, with its message
        kwargs["type"] = _number_or_text
        kwargs["metavar"] = f.metadata.get("metavar") or "VALUE"
    elif base is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif typing.get_origin(base) is Literal:
        kwargs["choices"] = typing.get_args(base)
    else:
        kwargs["type"] = base
        kwargs["metavar"] = f.metadata.get("metavar") or {float: "X", int: "N"}.get(base, "TEXT")
    group.add_argument(flag, **kwargs)


def add_config_args(parser: argparse.ArgumentParser, model_only: bool = False) -> None:
    """Every RunConfig setting as a flag, in groups (`model_only`: the model flags alone, for commands
    that build a model but do not train). The model is named positionally or with --model."""
    groups = {name: parser.add_argument_group(name) for name in GROUPS}
    g = groups["model"]
    name_field = ModelConfig.__dataclass_fields__["name"]
    g.add_argument("model_pos", nargs="?", metavar="MODEL", help="the model, as a positional or with --model")
    _argument(g, _RUN + "model.name", "--model", name_field, str, name_field.default)
    for path, f, tp in leaves(CommonModelOptions):
        _argument(g, _OPTION + path[-1], _flag(path, f), f, tp, None)
    g.add_argument("--model-opt", "-O", action="append", default=[], metavar="KEY=VALUE",
                   help="any other model option, e.g. -O skips=true -O width=40 (repeatable)")
    if model_only:
        return
    for path, f, tp in leaves(RunConfig):
        if path[0] == "model" or not f.metadata.get("cli", True):
            continue
        _argument(groups[f.metadata.get("group") or "run"], _RUN + ".".join(path), _flag(path, f), f, tp, f.default)


def add_settings_args(parser: argparse.ArgumentParser, cls: type, prefix: str) -> None:
    """Flags for every field of a flat Settings dataclass (e.g. config.LRFindConfig), under `prefix` dests."""
    groups: dict[str, Any] = {}
    for path, f, tp in leaves(cls):
        name = f.metadata.get("group") or "options"
        group = groups.get(name) or groups.setdefault(name, parser.add_argument_group(name))
        _argument(group, prefix + path[-1], _flag(path, f), f, tp, f.default)


def add_setting_arg(parser, cls: type, name: str, dest: str) -> None:
    """The flag of one field of a Settings dataclass (a spec setting a command may override); left out, it
    stays unset (None), so the spec's own value or the field's default applies."""
    f = cls.__dataclass_fields__[name]
    _argument(parser, dest, _flag((name,), f), f, typing.get_type_hints(cls)[name], f.default)


def settings_from_args(args: argparse.Namespace, cls: type, prefix: str) -> Any:
    """The `cls` instance the flags added by `add_settings_args` describe; a bad value is one ConfigError line."""
    given = {k[len(prefix):]: v for k, v in vars(args).items() if k.startswith(prefix)}
    try:
        return from_dict(cls, given)
    except SettingError as exc:
        flag = "--" + exc.path[0].replace("_", "-") if exc.path else ""
        raise ConfigError(f"{flag}: {exc.problem}" if flag else exc.problem) from None


def _flag_of(path: tuple[str, ...]) -> str:
    for p, f, _ in leaves(RunConfig):
        if p == path:
            return _flag(p, f)
    return ".".join(path)


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    options = {k[len(_OPTION):]: v for k, v in vars(args).items() if k.startswith(_OPTION)}
    for item in args.model_opt:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--model-opt expects KEY=VALUE, got '{item}'")
        options[key.replace("-", "_")] = parse_value(value)
    return options


def run_config(args: argparse.Namespace) -> RunConfig:
    """The RunConfig the flags describe: config defaults, overridden by the flags given."""
    given = {k[len(_RUN):]: v for k, v in vars(args).items() if k.startswith(_RUN)}
    positional = getattr(args, "model_pos", None)
    if positional is not None:
        if "model.name" in given and given["model.name"] != positional:
            raise ConfigError(f"two models named: '{positional}' and --model '{given['model.name']}'")
        given["model.name"] = positional
    given["model.options"] = model_options(args)
    try:
        return from_dict(RunConfig, nested(given))
    except SettingError as exc:
        if exc.path[:2] == ("model", "options"):
            option = exc.path[2] if len(exc.path) > 2 else ""
            flag = f"--{option}" if option in CommonModelOptions.__dataclass_fields__ else f"-O {option}"
            raise ConfigError(f"{flag}: {exc.problem}") from None
        raise ConfigError(f"{_flag_of(exc.path)}: {exc.problem}") from None


def model_config(args: argparse.Namespace) -> ModelConfig:
    """The model the flags name, with its options."""
    return run_config(args).model
