"""`cifarlab study SPEC`: run a study's experiments x seeds, resumably."""
from __future__ import annotations

import argparse

from cifarlab.cli.common import add_setting_arg, positive_int
from cifarlab.config import SpecFile


def jobs_arg(text: str) -> int | str:
    """'auto' or a positive number of processes."""
    return text if text == "auto" else positive_int(text)


def add_parser(sub) -> None:
    p = sub.add_parser("study", help="run a study spec (experiments x seeds); rerun to resume",
                       description="Run every experiment of a TOML study spec for each seed. Finished runs "
                                   "are recorded in DIR/store.sqlite and skipped when run again; a run that was "
                                   "stopped or killed goes on from its last finished epoch. With one job the epoch "
                                   "lines of the run in flight are shown, prefixed [experiment seed k].")
    p.add_argument("spec", help="study spec, e.g. studies/normalization.toml")
    p.add_argument("--seeds", type=positive_int, help="number of seeds (default: the spec's `seeds`)")
    p.add_argument("--jobs", type=jobs_arg, default="auto", metavar="N|auto",
                   help="runs at once, as processes (default: auto = 1 on a CPU, study.CUDA_JOBS per GPU with CUDA)")
    add_setting_arg(p, SpecFile, "seeds_together", "seeds_together")
    p.add_argument("--out", metavar="DIR", help="study folder (default runs/<study name>)")
    p.add_argument("--storage", metavar="URL", help="postgresql://... shared by workers on any machines started with "
                                                    "the same spec and URL: each run is done once, by one of them")
    p.add_argument("--report", action="store_true", help="write the report when the runs are done")
    p.add_argument("--tensorboard", metavar="DIR", help="also write each run's per-epoch losses, accuracies and "
                                                        "learning rate as TensorBoard scalars into "
                                                        "DIR/<study folder's name>/<experiment>/seed-<k> (needs the "
                                                        "tensorboard extra); not a setting of the runs")


def run(args: argparse.Namespace) -> int:
    from cifarlab.errors import DivergedError
    from cifarlab.study import diverged_runs, load_spec, open_store, run_study

    spec = load_spec(args.spec)
    folder = run_study(spec, out=args.out, seeds=args.seeds, jobs=args.jobs, storage=args.storage,
                       tensorboard=args.tensorboard, seeds_together=getattr(args, "seeds_together", None))
    if args.report:
        from cifarlab.report import write_report

        # The error grids read the data this spec trained on: the user's own spec, just run.
        for path in write_report(folder, data_root=spec.experiments[0].config.data.root, url=args.storage):
            print(f"report: {path}")
    with open_store(folder, args.storage, spec.name, create=False) as store:
        diverged = diverged_runs(store)
    if diverged:
        raise DivergedError(f"{len(diverged)} of the study's runs diverged (non-finite loss): {', '.join(diverged)}")
    return 0
