"""Numbers and configs as report text: mean +/- std cells, intervals, durations, config summaries and diffs."""
from __future__ import annotations

import json
import re
from typing import Any

from cifarlab.errors import CifarlabError
from cifarlab.report.stats import summarize
from cifarlab.report.study import Experiment

# Config keys that differ between runs of one experiment or carry no meaning for a comparison.
_IGNORED_KEYS = ("train.seed", "data.root", "data.download", "train.device", "version")


def pct(x: float) -> str:
    return f"{100 * x:.2f}"


def mean_std(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    """'72.31 ± 0.45' (or just the mean for one value); '–' for none."""
    s = summarize(values)
    if s.n == 0:
        return "\u2013"
    text = f"{scale * s.mean:.{digits}f}"
    return f"{text} \u00b1 {scale * s.std:.{digits}f}" if s.has_spread else text


def interval(values: list[float], scale: float = 100.0) -> str:
    s = summarize(values)
    return f"[{scale * s.lo:.2f}, {scale * s.hi:.2f}]" if s.has_spread else "\u2013"


def int_range(values: list[float]) -> str:
    lo, hi = int(min(values)), int(max(values))
    return f"{lo:,}" if lo == hi else f"{lo:,}\u2013{hi:,}"


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {s:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-").lower() or "x"


def unique_slugs(names: list[str], reserved: tuple[str, ...] = ()) -> dict[str, str]:
    """A distinct file/anchor-safe tag per name ('a b' and 'a-b' become 'a-b' and 'a-b-2')."""
    out: dict[str, str] = {}
    used = set(reserved)
    for name in names:
        base = tag = slug(name)
        k = 2
        while tag in used:
            tag, k = f"{base}-{k}", k + 1
        used.add(tag)
        out[name] = tag
    return out


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; model options become one entry each, so a diff names the option."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _with_model_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """The config with every model option filled in from the model's defaults (when the model is known)."""
    model = config.get("model", {})
    try:
        from cifarlab.models import model_options

        defaults = model_options(model.get("name", ""))
    except CifarlabError:
        return config
    return {**config, "model": {**model, "options": {**defaults, **model.get("options", {})}}}


def config_diff(exp: Experiment, ref: Experiment) -> list[str]:
    """'`model.options.width` 32 → 48' for every config value that differs from the reference."""
    a = flatten(_with_model_defaults(exp.runs[0].config))
    b = flatten(_with_model_defaults(ref.runs[0].config))
    return [f"`{key}` {json.dumps(b.get(key))} \u2192 {json.dumps(a.get(key))}" for key in sorted(set(a) | set(b))
            if not key.startswith(_IGNORED_KEYS) and a.get(key) != b.get(key)]


def config_summary(config: dict[str, Any]) -> str:
    """One line: model and options, optimiser, schedule, augmentation, epochs, batch size."""
    model, train = config.get("model", {}), config.get("train", {})
    optim = train.get("optim", {})
    opts = ", ".join(f"{k}={v}" for k, v in model.get("options", {}).items())
    parts = [f"`{model.get('name', '?')}`" + (f" ({opts})" if opts else ""),
             f"{optim.get('name', '?')} lr {optim.get('lr', '?')}, schedule {optim.get('schedule', '?')}",
             f"augment {train.get('augment', '?')}", f"{train.get('epochs', '?')} epochs",
             f"batch {train.get('batch_size', '?')}"]
    if optim.get("weight_decay"):
        parts.append(f"weight decay {optim['weight_decay']}")
    if train.get("ema"):
        parts.append(f"EMA {train['ema']}")
    return "; ".join(parts)
