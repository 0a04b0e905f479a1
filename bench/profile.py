"""Where a training step's time goes: a short `cifarlab train` under torch.profiler, a window of steps.

  python bench/profile.py [--name NAME] [--skip N] [--warmup N] [--steps N] [--rows N] [--json PATH] [--cpu]
                          -- TRAIN-ARGS...
  e.g. python bench/profile.py --name budget-on -- --model budget-net --norm bn -O whiten=true \\
           --epochs 4 --batch-size 512 --lr 0.8 --compile on

Prints, for training steps SKIP+WARMUP .. SKIP+WARMUP+STEPS-1 (0-based):
  - GPU kernel time per step: the profiler's "Self CUDA time total" / recorded steps;
  - kernel launches + memsets per step, from the cudaLaunchKernel, cuLaunchKernel, cudaLaunchKernelExC
    and cudaMemsetAsync rows (host calls, ~10 us each), and CUDA-graph replays per step;
  - wall time per step: the median with the profiler on, and the last epoch's loop seconds / steps
    (profiler off) when that epoch lies outside the window;
  - the top operators by GPU time and by CPU time.
`--json PATH` also writes these figures as data, for bench/tables.py.

Needs CUDA: without it the script says so in one line and exits 2. `--cpu` profiles CPU time only
(no kernel or launch figures): for checking the script itself on a machine without a GPU.
Steps are marked by a global optimizer-step hook, so the window counts optimiser steps; a training
loop that replays a captured step without calling `Optimizer.step` needs another marker.
Speed does not depend on the pixels: `python bench/fake_data.py DIR` and `CIFARLAB_DATA=DIR` profile
without the real data. Pick a window that holds no epoch end (the run's evaluation lands in the step
after it; the script warns when one does).
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# bench/ goes behind the standard library: run as a script it leads sys.path, and this file would then
# stand in for the standard library's `profile`, which torch.compile imports through cProfile.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE] + [str(HERE)]
if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent / "src"))  # this checkout's cifarlab, as bench/bench.py does

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict  # noqa: E402

from profile_stats import ProfileSummary, from_key_averages  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/profile.py", description=__doc__.split("\n\n")[0],
                                allow_abbrev=False)
    p.add_argument("--name", default="profile", help="label for the printed lines (default: profile)")
    # 200 + 10: inside epoch 3 of budget-net at batch 512 (97 steps per epoch) and inside epoch 2 of
    # s8-net at batch 256 (195), away from compilation, cuDNN autotuning and the epoch-end evaluations.
    p.add_argument("--skip", type=int, default=200, help="optimiser steps before the window (default 200)")
    p.add_argument("--warmup", type=int, default=10, help="profiler warm-up steps, not recorded (default 10)")
    p.add_argument("--steps", type=int, default=40, help="steps recorded (default 40)")
    p.add_argument("--rows", type=int, default=18, help="rows in each operator table (default 18)")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    p.add_argument("--cpu", action="store_true", help="profile CPU time only (no CUDA needed)")
    p.add_argument("train_args", nargs="*", metavar="TRAIN-ARGS", help="arguments of `cifarlab train`, after --")
    args = p.parse_args(argv)
    if min(args.skip, args.warmup) < 0 or args.steps < 1:
        p.error("--skip and --warmup must be >= 0, --steps >= 1")
    return args


def epoch_ends_in(first: int, last: int, steps_per_epoch: int) -> list[int]:
    """Epochs whose end-of-epoch evaluation falls inside the windows of training steps first..last.

    Step k's window runs from the end of step k-1 to the end of step k, so the evaluation after
    epoch e (whose last step is e*spe - 1) is inside the window of step e*spe.
    """
    return [e for e in range(1, last // steps_per_epoch + 1) if first <= e * steps_per_epoch <= last]


def run(args: argparse.Namespace) -> int:
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook
    from torch.profiler import ProfilerActivity, profile, schedule

    from cifarlab.cli import main as cifarlab

    if not args.cpu and not torch.cuda.is_available():
        print(f"bench/profile.py: needs CUDA (torch {torch.__version__} sees no GPU); "
              "--cpu profiles CPU time only", file=sys.stderr)
        return 2
    train_args = list(args.train_args)
    if "--cuda-graph" in train_args and train_args[train_args.index("--cuda-graph") + 1:][:1] == ["on"]:
        # A replayed graph runs the optimiser's kernels without calling optimizer.step(): no hook fires.
        print("bench/profile.py: steps are marked by optimizer-step hooks, which a captured step "
              "(--cuda-graph on) never calls; use bench/step_check.py for its timings", file=sys.stderr)
        return 2
    if "--cuda-graph" not in train_args:  # auto captures on CUDA; profile the uncaptured step
        train_args += ["--cuda-graph", "off"]
    tmp = None
    if "--out" not in train_args:
        tmp = tempfile.TemporaryDirectory(prefix="cifarlab-profile-")
        train_args += ["--out", str(Path(tmp.name) / "run")]
    out = Path(train_args[train_args.index("--out") + 1])
    activities = [ProfilerActivity.CPU] + ([] if args.cpu else [ProfilerActivity.CUDA])
    first = args.skip + args.warmup
    last = first + args.steps - 1
    prof = profile(activities=activities,
                   schedule=schedule(wait=args.skip, warmup=args.warmup, active=args.steps, repeat=1))
    stamps: list[float] = []  # perf_counter at the end of each optimiser step

    def mark(opt, *_):
        if not any(p.grad is not None for g in opt.param_groups for p in g["params"]):
            return  # the step plan's shadow optimiser (cifarlab.step.StepPlan) steps once, without gradients
        # Profiler step 0 is everything up to the end of training step 0 (set-up and compilation
        # included); step k >= 1 is training step k, so the schedule's indices are training steps.
        stamps.append(time.perf_counter())
        prof.step()

    hook = register_optimizer_step_post_hook(mark)
    prof.start()
    try:
        rc = cifarlab(["train", *train_args])
    except SystemExit as exc:  # argparse errors from `cifarlab train`
        rc = exc.code if isinstance(exc.code, int) else 2
    finally:
        prof.stop()
        hook.remove()
    try:
        if rc != 0:
            print(f"bench/profile.py: cifarlab train exited {rc}", file=sys.stderr)
            return rc
        if len(stamps) <= last:
            print(f"bench/profile.py: the run took {len(stamps)} optimiser steps; the window needs "
                  f"{last + 1} (--skip {args.skip} + --warmup {args.warmup} + --steps {args.steps}): "
                  "train longer or skip less", file=sys.stderr)
            return 2
        averages = prof.key_averages()
        history = json.loads((out / "history.json").read_text())
        report = figures(args, averages, stamps, history, first, last)
        print_report(args, report, averages, train_args if tmp is None else train_args[:-2])
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
        return 0
    finally:
        if tmp is not None:
            tmp.cleanup()


def figures(args, averages, stamps: list[float], history: dict, first: int, last: int) -> dict:
    """The window's figures as plain data (what --json writes)."""
    import torch

    spe = history["meta"]["steps_per_epoch"]
    gaps = [stamps[k] - stamps[k - 1] for k in range(max(first, 1), last + 1)]
    # The last epoch's loop time (no evaluation) is a profiler-off step time if the window is earlier.
    epochs = history["epochs"]
    last_epoch_free = len(epochs) * spe - spe > last
    report = {
        "name": args.name, "torch": torch.__version__, "device": history["meta"].get("device"),
        "window": [first, last], "steps_per_epoch": spe, "epoch_ends_in_window": epoch_ends_in(first, last, spe),
        "wall_ms_profiled": 1e3 * statistics.median(gaps),
        "wall_ms_unprofiled": 1e3 * epochs[-1]["train_seconds"] / spe if last_epoch_free else None,
        "summary": None,
    }
    if not args.cpu:
        report["summary"] = asdict(from_key_averages(averages))
    return report


def print_report(args, report: dict, averages, train_args: list[str]) -> None:
    name, (first, last) = args.name, report["window"]
    print(f"### {name}: cifarlab train {' '.join(train_args)}")
    print(f"{name}: training steps {first}-{last} recorded ({last - first + 1}), {report['steps_per_epoch']} "
          f"steps per epoch, torch {report['torch']}, {report['device']}")
    if report["summary"] is not None:
        s = ProfileSummary(**report["summary"])
        each = ", ".join(f"{k} {v / s.steps:.1f}" for k, v in s.launches.items())
        print(f"{name}: GPU kernel time per step {s.kernel_ms_per_step:.3f} ms "
              f"(Self CUDA time total {s.kernel_us / 1e3:.3f} ms / {s.steps} steps); "
              f"cuDNN convolutions {100 * s.conv_share:.0f}% of it")
        print(f"{name}: kernel launches + memsets per step {s.launches_per_step:.1f} ({each or 'none'}); "
              f"CUDA-graph replays per step {s.graph_launches / s.steps:.1f}")
    else:
        print(f"{name}: GPU not profiled (--cpu)")
    off = report["wall_ms_unprofiled"]
    print(f"{name}: wall per step {report['wall_ms_profiled']:.2f} ms (median, profiler on); "
          + (f"{off:.2f} ms (last epoch's loop / steps, profiler off)" if off is not None
             else "profiler-off figure needs an epoch after the window"))
    for epoch in report["epoch_ends_in_window"]:
        print(f"{name}: warning: the evaluation after epoch {epoch} lies in the window (step "
              f"{epoch * report['steps_per_epoch']}); choose --skip so that no epoch ends inside it")
    sort_keys = ([] if args.cpu else ["self_device_time_total"]) + ["self_cpu_time_total"]
    for key in sort_keys:
        print(averages.table(sort_by=key, row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    raise SystemExit(run(parse_args(sys.argv[1:])))
