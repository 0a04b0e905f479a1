"""`cifarlab train`: one run into runs/NAME."""
from __future__ import annotations

import argparse
import time
from contextlib import nullcontext
from pathlib import Path

from cifarlab.cli.common import add_config_args, run_config
from cifarlab.errors import ConfigError, DivergedError


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train one model and write a run folder",
                       description="Train one model; writes OUT/{config.json, history.csv, history.json, "
                                   "model.pt, predictions.npz, layers.json, cams.npz} (+ model_source.py for a "
                                   "FILE.py:NAME model, lr_find.csv/png with --lr auto).")
    add_config_args(p)
    out = p.add_argument_group("output")
    out.add_argument("--out", metavar="DIR", help="run folder (default: runs/<model>-<date>-<time>; "
                     "net.py:Net -> runs/net-Net-...)")
    out.add_argument("--overwrite", action="store_true",
                     help="start afresh, replacing an existing cifarlab run folder (never any other folder) and "
                          "its interrupted run")
    out.add_argument("--resume", action="store_true",
                     help="continue the interrupted run into --out (OUT.incomplete, or the checkpoint of a killed "
                          "run) after its last finished epoch, as the same command does without it, but refuse "
                          "rather than start afresh when what is there cannot be continued; the settings must be "
                          "the same")
    out.add_argument("--tensorboard", metavar="DIR",
                     help="also write each epoch's losses, accuracies and learning rate as TensorBoard scalars "
                          "into DIR/<name of --out> (needs the tensorboard extra); not a setting of the run")


def run(args: argparse.Namespace) -> int:
    from cifarlab.experiment import run_experiment
    from cifarlab.models.external import run_name
    from cifarlab.tensorboard_log import EpochScalars

    cfg = run_config(args)
    if args.resume and args.overwrite:
        raise ConfigError("--resume continues a run and --overwrite starts it afresh: choose one")
    if args.resume and not args.out:
        raise ConfigError("--resume needs --out DIR: the run folder to continue")
    out = Path(args.out or f"runs/{run_name(cfg.model.name)}-{time.strftime('%Y%m%d-%H%M%S')}")
    # The same command again continues an interrupted run; --overwrite starts afresh.
    resume = "yes" if args.resume else "no" if args.overwrite else "auto"
    with EpochScalars(Path(args.tensorboard) / out.name) if args.tensorboard else nullcontext() as scalars:
        history = run_experiment(cfg, out, overwrite=args.overwrite, resume=resume, on_epoch=scalars)
    final, meta = history.final, history.meta
    print(f"final test accuracy {final['test_acc']:.4f}"
          + (f" (flip TTA {final['test_acc_tta']:.4f}, 6-view TTA {final['test_acc_tta6']:.4f})"
             if "test_acc_tta6" in final else "")
          + f" - {meta['params']:,} trainable params"
          + (f" (+{meta['non_trainable_params']:,} frozen)" if meta.get("non_trainable_params") else "")
          + f" - {meta['train_seconds']:.1f}s on {meta['device']}"
          + (f" (+{meta['warmup_seconds']:.1f}s compile/warm-up)" if meta.get("warmup_seconds") else ""))
    print(f"results: {out}/")
    if meta.get("diverged_at_epoch"):
        raise DivergedError(f"the loss is not finite at epoch {meta['diverged_at_epoch']} (learning rate too "
                            f"high?); the run was kept in {out}/")
    return 0
