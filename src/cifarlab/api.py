"""cifarlab from Python, for notebooks: train a model, tabulate its layers, run a study, write a report.

    import cifarlab
    from mynet import Net

    model = Net(norm="gn")
    print(cifarlab.layer_table(model, format="table"))          # shapes, receptive fields, parameters, MACs
    history = cifarlab.fit(model, epochs=5, subset=5000)        # trains `model` in place
    history.rows[-1]["test_acc"]
    cifarlab.fit("mynet.py:Net", norm="ln", epochs=5, out="runs/ln")  # a run folder, as `cifarlab train`
    folder = cifarlab.run_study("studies/normalization-cpu.toml")
    cifarlab.write_report(folder)

`fit` takes the `cifarlab train` flags as keywords, spelled with underscores (`batch_size=128`,
`optimizer="adam"`, `label_smoothing=0.0`, `max_params=50_000`, `norm="ln"`, `data="path/to/cifar10"`),
with the same meaning and the same defaults, both read from cifarlab.config. (`fit`, not `train`:
`cifarlab.train` is the module that holds the training loop.)
"""
from __future__ import annotations

import difflib
import inspect
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from cifarlab.config import CommonModelOptions, RunConfig, SettingError, from_dict, leaves, nested
from cifarlab.console import log_line
from cifarlab.errors import ConfigError

if TYPE_CHECKING:  # the heavy imports wait until a function is called: `import cifarlab` stays cheap
    from torch import nn

    from cifarlab.analysis import LayerTable
    from cifarlab.data import DataSplits
    from cifarlab.train import History


def _keywords() -> dict[str, tuple[str, ...]]:
    """fit() keyword -> RunConfig path: each flag's name with underscores ('optimizer' -> train.optim.name)."""
    out = {}
    for path, f, _ in leaves(RunConfig):
        if path[0] == "model" or not f.metadata.get("cli", True):
            continue  # the model is fit's first argument; its shared options follow
        flag = f.metadata.get("flag")
        out[flag.lstrip("-").replace("-", "_") if flag else path[-1]] = path
    for name in CommonModelOptions.__dataclass_fields__:
        out[name] = ("model", "options", name)
    return out


def _config(model: str = "s8-net", options: dict[str, Any] | None = None, **settings: Any) -> RunConfig:
    """The RunConfig that `cifarlab train --model MODEL [flags]` would use; `settings` are fit()'s keywords."""
    known = _keywords()
    for key in settings:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f" (settings: {', '.join(known)})"
            raise ConfigError(f"unknown setting '{key}'{hint}")
    tree = nested({"model.name": model, "model.options": dict(options or {}),
                   **{".".join(known[key]): value for key, value in settings.items()}})
    try:
        return from_dict(RunConfig, tree)
    except SettingError as exc:
        by_path = {v: k for k, v in known.items()}
        raise ConfigError(f"{by_path.get(exc.path, exc.key)}: {exc.problem}") from None


def _object_source(model: nn.Module) -> dict[str, Any]:
    """Where a model object's class is written, for the run folder's copy; {} for a class typed in a notebook."""
    import hashlib

    try:
        path = inspect.getsourcefile(type(model))
    except TypeError:  # defined in a notebook cell or the interpreter: no file to copy
        return {}
    if not path or not os.path.isfile(path) or Path(path).resolve().is_relative_to(Path(__file__).parent):
        return {}
    data = Path(path).read_bytes()
    return {"path": str(Path(path).resolve()), "object": type(model).__qualname__,
            "sha256": hashlib.sha256(data).hexdigest()}


def fit(model: nn.Module | str, *, out: str | os.PathLike | None = None,
        data: str | os.PathLike | DataSplits | None = None, options: dict[str, Any] | None = None, overwrite: bool = False,
        log: Callable[[str], None] | None = log_line, **settings: Any) -> History:
    """Train `model` (an nn.Module, trained in place, or a name: 's8-net', 'mynet.py:Net'); return its History.

    `settings` are the `cifarlab train` flags with underscores (epochs=5, lr=0.2, norm="gn"); `options` the
    -O model options. `data`: a CIFAR-10 folder, or splits already loaded (cifarlab.data.make_splits).
    With `out`, a run folder is written exactly as `cifarlab train --out` writes it; without, nothing is.
    `log=None` silences the epoch lines. A model object keeps its own initialisation; `seed` still
    fixes the data order, augmentation and dropout.
    """
    from torch import nn

    from cifarlab.data import DataSplits
    from cifarlab.experiment import load_data, prepare, run_experiment
    from cifarlab.train import train

    splits = data if isinstance(data, DataSplits) else None
    if data is not None and splits is None:
        settings["data"] = str(data)
    if isinstance(model, nn.Module):
        given = [*(options or {}), *(k for k in settings if k in CommonModelOptions.__dataclass_fields__)]
        if given:  # they would be silently ignored: the object is built already
            raise ConfigError(f"'{given[0]}' is a model option: pass it when building the object "
                              f"({type(model).__name__}({given[0]}=...)), or give fit() the model's name")
        cfg = _config(f"{type(model).__qualname__} (object)", None, **settings)
        cfg = replace(cfg, model=replace(cfg.model, source=_object_source(model)))
        obj: nn.Module | None = model
    elif isinstance(model, str):
        cfg, obj = _config(model, options, **settings), None
    else:
        raise ConfigError(f"fit() takes an nn.Module or a model name, not a {type(model).__name__}")
    if out is not None:
        return run_experiment(cfg, out, data=splits, overwrite=overwrite, log=log, model=obj)
    # No run folder: the same checks and the same loop as run_experiment, without the files.
    cfg, obj = prepare(cfg, obj)
    return train(obj, splits if splits is not None else load_data(cfg), cfg.train, log=log)


def layer_table(model: nn.Module | str, input_shape: tuple[int, int, int] = (3, 32, 32), format: str | None = None,
                **options: Any) -> LayerTable | str:
    """Every layer's shape, kernel/stride/padding, jump, receptive field, parameters and MACs.

    `model`: an nn.Module or a name ('s8-net', 'mynet.py:Net', with `options` for its constructor).
    `format` None gives the LayerTable (rows of data); 'table', 'markdown', 'csv' or 'json' gives text.
    """
    from cifarlab.analysis import format_table
    from cifarlab.analysis import layer_table as table_of
    from cifarlab.config import ModelConfig
    from cifarlab.models import model_from_config

    if isinstance(model, str):
        model = model_from_config(ModelConfig(name=model, options=options))
    elif options:
        raise ConfigError(f"'{next(iter(options))}' is a model option: pass it when building the object")
    table = table_of(model, tuple(input_shape))
    return table if format is None else format_table(table, format)


def run_study(spec: str | os.PathLike, seeds: int | None = None, jobs: int = 1, out: str | os.PathLike | None = None,
              log: Callable[[str], None] = log_line, seeds_together: str | None = None) -> Path:
    """Run a study spec's experiments x seeds (resuming a finished part), as `cifarlab study`; the study folder.
    `seeds_together`: "auto", "on" or "off" as `--seeds-together` (default: the spec's)."""
    from cifarlab.study import load_spec
    from cifarlab.study import run_study as run

    return run(load_spec(spec), out=out, seeds=seeds, jobs=jobs, log=log, seeds_together=seeds_together)


def write_report(folder: str | os.PathLike, data: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Write FOLDER/report.html and report.md for a study folder, as `cifarlab report`; their paths."""
    from cifarlab.report import write_report as write

    html, md = write(folder, data_root=data)
    return Path(html), Path(md)
