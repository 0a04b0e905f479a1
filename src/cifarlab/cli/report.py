"""`cifarlab report DIR`: write DIR/report.html and DIR/report.md from a study folder."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="write report.html and report.md for a study, sweep or run folder",
                       description="Summarise a study folder (comparison table over seeds, insights, training "
                                   "curves, confusion matrices, misclassified images, layer tables), a sweep "
                                   "folder, or one run folder (its curves, 10 most confident mistakes, confusion "
                                   "matrix, per-class accuracy, layer table, config and model source). Writes "
                                   "DIR/report.html (self-contained) and DIR/report.md (+ DIR/report-files/).")
    p.add_argument("folder", metavar="DIR", help="study folder (holds store.sqlite), sweep folder (sweep.json) or "
                                                 "run folder (config.json and history.json, as `cifarlab train` "
                                                 "writes it)")
    p.add_argument("--storage", metavar="URL", help="the PostgreSQL URL a sweep or a shared study (study --storage) "
                                                    "is stored in, or a sweep's Redis URL; DIR is a folder that "
                                                    "took part in it")
    p.add_argument("--data", metavar="DIR",
                   help="CIFAR-10 folder for the misclassified-image grids (default: $CIFARLAB_DATA, then "
                        "./data; never the folder recorded in the study)")


def run(args: argparse.Namespace) -> int:
    from cifarlab.sweep import is_sweep_folder, require_optuna

    shared_study = (Path(args.folder) / "study.json").is_file()  # cifarlab study --storage (study_shared.MARKER)
    if is_sweep_folder(args.folder) or (args.storage and not shared_study):
        require_optuna()
        from cifarlab.report.sweep import write_sweep_report

        html_path, md_path = write_sweep_report(args.folder, url=args.storage, data_root=args.data)
    else:
        from cifarlab.report import write_report

        html_path, md_path = write_report(args.folder, data_root=args.data, url=args.storage)
    print(f"report: {html_path}")
    print(f"        {md_path}")
    return 0
