"""`cifarlab sweep SPEC`: a hyper-parameter search on Optuna; rerun (or start on another machine) to join it."""
from __future__ import annotations

import argparse

from cifarlab.cli.common import non_negative_int, positive_int
from cifarlab.sweep import require_optuna


def add_parser(sub) -> None:
    p = sub.add_parser("sweep", help="search hyper-parameters (Optuna) on a validation split; rerun to resume",
                       description="Search the [search] space of a sweep spec (a study spec plus [search]) for the "
                                   "highest final-epoch validation accuracy, pruning hopeless trials. The search "
                                   "lives in DIR/sweep.journal, or in PostgreSQL or Redis with --storage, where "
                                   "any number of machines running the same command join it.")
    p.add_argument("spec", help="sweep spec, e.g. studies/tune/s8-bn.toml")
    p.add_argument("--trials", type=positive_int, help="trials in the whole search, over all workers and reruns "
                                                       "(default: the spec's [sweep] trials)")
    p.add_argument("--timeout", type=positive_int, metavar="S", help="start no new trial after S seconds")
    p.add_argument("--seed", type=non_negative_int, help="TPE sampler seed (default: the spec's)")
    p.add_argument("--jobs", type=positive_int, default=1, help="worker processes on this machine (default 1)")
    p.add_argument("--storage", metavar="URL", help="postgresql://user:password@host/db or redis://host:port/db "
                                                    "shared by every worker (default: DIR/sweep.journal, this "
                                                    "machine only)")
    p.add_argument("--out", metavar="DIR", help="sweep folder (default runs/<sweep name>)")
    p.add_argument("--final-seeds", type=non_negative_int, metavar="N",
                   help="then retrain the best trial on all training images with N fresh seeds and measure "
                        "its test accuracy (default: the spec's)")
    p.add_argument("--report", action="store_true", help="write the report when done")


def run(args: argparse.Namespace) -> int:
    require_optuna()
    from cifarlab.sweep import load_sweep_spec
    from cifarlab.sweep.run import run_sweep

    spec = load_sweep_spec(args.spec)
    folder = run_sweep(spec, args.out, url=args.storage, trials=args.trials, timeout=args.timeout, seed=args.seed,
                       jobs=args.jobs, final_seeds=args.final_seeds)
    if args.report:
        from cifarlab.report.sweep import write_sweep_report

        # The final runs' error grids read the data this spec trained on: the user's own spec, just run.
        for path in write_sweep_report(folder, url=args.storage, data_root=spec.config({}).data.root):
            print(f"report: {path}")
    return 0
