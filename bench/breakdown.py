"""Where a study's wall time goes: per experiment, the mean seconds of each part of a run.

Usage: python bench/breakdown.py STUDY_DIR [--wall S] [--jobs J]

Reads each run's history.json (meta written by cifarlab.experiment and cifarlab.train):
  setup   model, data hand-over, run folder (setup_seconds)
  warm-up CUDA-graph capture / compile (warmup_seconds)
  train   the epochs, per-epoch evaluation included (train_seconds)
  save    weights, predictions, Grad-CAM, history (save_seconds)
With --wall (the study command's wall time) and --jobs, the rest of the process-seconds (worker start,
imports, CUDA context, waiting for a task) is printed as "unaccounted". Not a test: it measures.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

PARTS = (("setup", "setup_seconds"), ("warm-up", "warmup_seconds"), ("train", "train_seconds"),
         ("save", "save_seconds"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", type=Path)
    ap.add_argument("--wall", type=float, help="the study command's wall time, seconds")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes the study ran with")
    args = ap.parse_args()
    by_exp: dict[str, list[dict]] = {}
    for path in sorted(args.study.glob("*/seed-*/history.json")):
        by_exp.setdefault(path.parent.parent.name, []).append(json.loads(path.read_text())["meta"])
    if not by_exp:
        raise SystemExit(f"breakdown.py: no finished runs under {args.study}")
    print(f"{'experiment':<14} {'n':>2} " + " ".join(f"{name + ' s':>9}" for name, _ in PARTS) + f" {'run s':>7}")
    total = 0.0
    for exp, metas in by_exp.items():
        means = [statistics.mean(m.get(key) or 0.0 for m in metas) for _, key in PARTS]
        total += sum(sum(m.get(key) or 0.0 for _, key in PARTS) for m in metas)
        print(f"{exp:<14} {len(metas):>2} " + " ".join(f"{v:>9.2f}" for v in means) + f" {sum(means):>7.2f}")
    print(f"sum over runs: {total:.1f} process-s")
    if args.wall:
        budget = args.wall * args.jobs
        print(f"wall {args.wall:.1f} s x {args.jobs} jobs = {budget:.1f} process-s; unaccounted "
              f"{budget - total:.1f} ({100 * (budget - total) / budget:.0f}%)")


if __name__ == "__main__":
    main()
