"""Model registry: `register_model`, `create_model(name, **options)`, `list_models()`."""
from __future__ import annotations

import inspect
import types
import typing
from typing import Any, Callable

import torch
from torch import nn

from cifarlab.config import CommonModelOptions, SettingError, check_model_options, check_value, type_name
from cifarlab.errors import BudgetError, ConfigError, exception_line
from cifarlab.layers import in_mode

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: make a model factory available to `create_model` under `name`."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model '{name}' registered twice")
        _MODELS[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_MODELS)


def model_options(name: str) -> dict[str, Any]:
    """The options a model accepts, with their defaults."""
    fn = _get(name)
    return {p.name: p.default for p in inspect.signature(fn).parameters.values()}


def model_doc(name: str) -> str:
    """First line of the model factory's docstring."""
    return (inspect.getdoc(_get(name)) or "").splitlines()[0]


def _get(name: str) -> Callable[..., nn.Module]:
    if name not in _MODELS:
        raise ConfigError(f"unknown model '{name}' (known: {', '.join(list_models())})")
    return _MODELS[name]


def create_model(name: str, **options: Any) -> nn.Module:
    """Build model `name`; an option it does not accept is a ConfigError naming it."""
    fn = _get(name)
    check_options(f"model '{name}'", fn, options)
    numbers = {k: v for k, v in options.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    try:  # ranges: ModelConfig checked them already, a direct call (a config read back from a store) not
        check_model_options(numbers)
    except SettingError as exc:
        raise ConfigError(f"model '{name}' option {exc}") from None
    return fn(**options)


# Options every model is offered through flags of their own (--norm, --groups, --dropout); a model that does
# not take one must say so rather than ignore it.
SHARED_OPTIONS = tuple(CommonModelOptions.__dataclass_fields__)


def check_options(label: str, fn: Callable[..., Any], options: dict[str, Any]) -> None:
    """Check `options` against the signature of `fn` (a factory or an nn.Module class): unknown names, missing
    required ones and, where a parameter has an annotation or a default, the value's type. `label` starts
    each message ("model 's8-net'")."""
    signature = inspect.signature(fn).parameters.values()
    params = {p.name: p for p in signature if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in signature)  # **kwargs: any name may be meant for it
    listed = f"options: {', '.join(params)}" if params else "it takes no options"
    hints = _type_hints(fn)
    for key, value in options.items():
        if key not in params:
            if takes_any:
                continue
            if key in SHARED_OPTIONS:
                raise ConfigError(f"{label} takes no '{key}' option, so --{key} cannot apply to it ({listed})")
            raise ConfigError(f"{label} has no option '{key}' ({listed})")
        # Options come from the CLI and TOML: catch `dropout = "high"` here, not deep in a layer.
        expected = _expected_type(hints.get(key), params[key].default)
        if expected is not None:
            try:
                check_value(value, expected)
            except SettingError:
                name = type_name(expected)
                raise ConfigError(f"{label} option '{key}' expects {name}, got {value!r}") from None
    missing = [n for n, p in params.items() if p.default is p.empty and n not in options]
    if missing:
        raise ConfigError(f"{label} needs a value for '{missing[0]}' (-O {missing[0]}=VALUE, or `options` in a spec)")


def _type_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    target = fn.__init__ if isinstance(fn, type) else fn
    try:
        return typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 - an annotation naming something undefined: check by the defaults alone
        return {}


def _checkable(tp: Any) -> bool:
    """Whether config.check_value can judge a value against annotation `tp` (plain values, not callables)."""
    origin = typing.get_origin(tp)
    if origin is typing.Literal or tp in (int, float, bool, str, type(None)):
        return True
    if origin in (types.UnionType, typing.Union):
        return all(_checkable(a) for a in typing.get_args(tp))
    if origin in (list, tuple):  # list[int], tuple[int, ...], tuple[int, int]: one item type
        items = {a for a in typing.get_args(tp) if a is not ...}
        return len(items) == 1 and _checkable(next(iter(items)))
    return False


def _expected_type(hint: Any, default: Any) -> Any:
    # The annotation when it is a plain type; else the default's type (bool is never an int, an int is a
    # float); None when neither says anything.
    if hint is not None and _checkable(hint):
        return hint
    if default is inspect.Parameter.empty or default is None:
        return None
    return type(default) if type(default) in (int, float, bool, str) else None


def check_output(model: nn.Module, name: str, classes: int, input_shape: tuple[int, int, int] = (3, 32, 32)) -> None:
    """Run one probe batch of 2 blank images in eval mode and require one row of `classes` scores per image.

    Logits and log-probabilities (`F.log_softmax`) both pass: everything downstream is unchanged by a
    per-row shift. Batch 2, not 1, so that `x.view(-1, 10)` on a map that was not pooled to 1x1 shows up as
    extra rows. Zeros use no random numbers, so the run's seeded stream is untouched.
    """
    ref = next(iter(model.parameters()), None)
    x = torch.zeros((2, *input_shape), device=ref.device if ref is not None else None)
    try:
        with torch.no_grad(), in_mode(model):
            out = model(x)
    except Exception as exc:  # noqa: BLE001 - any failure in a user's forward is theirs to read
        size, why = "x".join(map(str, input_shape)), exception_line(exc, _source_file(model))
        raise ConfigError(f"{name} fails on a batch of 2 images {size}: {why}") from None
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"{name} returns a {type(out).__name__}, not a tensor of shape (batch, {classes})")
    if tuple(out.shape) != (2, classes):
        raise ConfigError(f"{name} returns shape {tuple(out.shape)} for a batch of 2 images; expected (2, {classes}), "
                          f"one row of {classes} class scores per image")


def _source_file(model: nn.Module) -> str | None:
    try:
        return inspect.getsourcefile(type(model))
    except TypeError:
        return None


def count_params(model: nn.Module, trainable: bool = True) -> int:
    """Number of (trainable or non-trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad == trainable)


def check_budget(model: nn.Module, max_params: int | None, name: str = "model") -> int:
    """Raise BudgetError when the trainable parameter count exceeds `max_params`; return the count."""
    n = count_params(model)
    if max_params is not None and n > max_params:
        raise BudgetError(f"{name} has {n:,} trainable parameters, {n - max_params:,} over the budget of {max_params:,}")
    return n
