"""`cifarlab lr-find`: the learning-rate range test on the training split; prints the suggested peak lr."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from cifarlab.cli.common import add_config_args, add_settings_args, run_config, settings_from_args
from cifarlab.config import LRFindConfig
from cifarlab.errors import ConfigError

_FIND = "find:"


def add_parser(sub) -> None:
    p = sub.add_parser("lr-find", help="learning-rate range test: suggest a peak lr for a model and recipe",
                       description="Smith's learning-rate range test: the training step of `cifarlab train` "
                                   "(same model, optimiser, batch size, augmentation, regularisation) with the lr "
                                   "growing exponentially from --start-lr to --end-lr, stopped when the smoothed "
                                   "loss exceeds 4x its best. Suggests the lr at the smoothed loss's minimum / 10 "
                                   "as the peak lr of a schedule, and writes OUT/lr_find.png (loss against lr) and "
                                   "OUT/lr_find.csv (every step). Runs on the training split only (after --val and "
                                   "--subset); --lr, --schedule and --epochs have no effect here. `cifarlab train "
                                   "--lr auto` runs the same test first and trains at its suggestion.")
    add_config_args(p)
    add_settings_args(p, LRFindConfig, _FIND)
    out = p.add_argument_group("output")
    out.add_argument("--out", metavar="DIR", help="folder for lr_find.png and lr_find.csv (default: "
                     "runs/lr-find-<model>-<date>-<time>); nothing else is written")


def run(args: argparse.Namespace) -> int:
    from cifarlab.experiment import load_data, prepare
    from cifarlab.lrfind import range_test, write_outputs
    from cifarlab.models.external import run_name
    from cifarlab.train import autocast_for, init_from_data, resolve_device

    cfg = run_config(args)
    find = settings_from_args(args, LRFindConfig, _FIND)
    cfg, model = prepare(cfg)
    device = resolve_device(cfg.train.device)
    out = Path(args.out or f"runs/lr-find-{run_name(cfg.model.name)}-{time.strftime('%Y%m%d-%H%M%S')}")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out '{out}' is a file, not a folder")
    data = load_data(cfg)
    train = data.train.to(device)
    model = model.to(device)
    init_from_data(model, train)  # as train.train does before its first step
    result = range_test(model, train, cfg.train, find, device, autocast_for(device, cfg.train.precision))
    out.mkdir(parents=True, exist_ok=True)
    o = cfg.train.optim
    title = (f"{cfg.model.name}: {o.name}, batch {result.batch_size}, momentum {o.momentum:g}, "
             f"weight decay {o.weight_decay:g}")
    csv_path, png_path = write_outputs(out, result, title)
    print(result.line() + f" ({result.seconds:.0f}s)")
    print(f"results: {png_path}  {csv_path}")
    return 0
