"""Model registry: `register_model`, `create_model(name, **options)`, `list_models()`."""
from __future__ import annotations

import inspect
from typing import Any, Callable

from torch import nn

from cifarlab.config import SettingError, check_model_options
from cifarlab.errors import BudgetError, ConfigError

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
    accepted = model_options(name)
    for key, value in options.items():
        if key not in accepted:
            raise ConfigError(f"model '{name}' has no option '{key}' (options: {', '.join(accepted)})")
        default = accepted[key]
        # Options come from the CLI and TOML: catch `dropout = "high"` here, not deep in a layer.
        # bool is a subclass of int: `width=true` must not pass as an int option.
        wrong_bool = isinstance(value, bool) and not isinstance(default, bool)
        if default is not None and (wrong_bool or not isinstance(value, type(default))):
            if wrong_bool or not (isinstance(default, float) and isinstance(value, int)):
                raise ConfigError(f"model '{name}' option '{key}' expects {type(default).__name__}, got {value!r}")
    numbers = {k: v for k, v in options.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    try:  # ranges: ModelConfig checked them already, a direct call (a config read back from a store) not
        check_model_options(numbers)
    except SettingError as exc:
        raise ConfigError(f"model '{name}' option {exc}") from None
    return fn(**options)


def count_params(model: nn.Module, trainable: bool = True) -> int:
    """Number of (trainable or non-trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad == trainable)


def check_budget(model: nn.Module, max_params: int | None, name: str = "model") -> int:
    """Raise BudgetError when the trainable parameter count exceeds `max_params`; return the count."""
    n = count_params(model)
    if max_params is not None and n > max_params:
        raise BudgetError(f"{name} has {n:,} trainable parameters, {n - max_params:,} over the budget of {max_params:,}")
    return n
