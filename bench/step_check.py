"""GPU check of the captured training step (issue 11): correctness tests, then each training mode timed.

  python bench/step_check.py RESULTS [--data DIR] [--budget-s 360] [--work DIR]

1. The CUDA tests of tests/test_step.py: three replays of the captured step against three uncaptured
   steps, and a 2-epoch captured run (eager and compiled) against an uncaptured one.
2. A 2-epoch smoke run of the captured step and of eager on random CIFAR-shaped images
   (bench/fake_data.py), so the timing rows below are not the first CUDA graph this machine sees.
3. 20-epoch runs of budget-net BN (-O whiten=true --batch-size 512 --lr 0.8) and s8-net BN (default
   recipe), one per mode, on the real data (--data, else $CIFARLAB_DATA; random images, marked as such,
   when neither holds CIFAR-10):
     graph            the whole step captured as one CUDA graph, eager kernels (--cuda-graph on --compile off)
     eager            no compiler, no graph (--compile off)
     graph+compile    inductor kernels inside the captured step (--cuda-graph on --compile on)
     compile          today's CUDA default (--compile on)
     reduce-overhead  inductor with its own CUDA graphs around the model only
Runs go in priority order and each in its own process, so a crash or a broken CUDA context costs one
line. One that would not fit in what is left of --budget-s is skipped with a line. Compiled runs share
inductor's on-disk cache: the first compiled run of a model pays the cold compile, later ones less.

Setup s (model and data) and save s (weights, predictions, Grad-CAM) come from each run's meta; the rest of
the wall time is the process: interpreter, imports, CUDA context.
RESULTS receives step_check.md (the table), step_check.log (every command and its output) and
histories.json (every run's history and meta); run folders go to --work.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

MODELS = {
    "budget-net": ["--model", "budget-net", "--norm", "bn", "-O", "whiten=true", "--batch-size", "512", "--lr", "0.8"],
    "s8-net": ["--model", "s8-net", "--norm", "bn"],
}
MODES = {
    "graph": ["--compile", "off", "--cuda-graph", "on"],
    "eager": ["--compile", "off", "--cuda-graph", "off"],
    "graph+compile": ["--compile", "on", "--cuda-graph", "on"],
    "compile": ["--compile", "on", "--cuda-graph", "off"],
    "reduce-overhead": ["--compile", "reduce-overhead", "--cuda-graph", "off"],
}
# (data, model, mode, epochs, expected wall seconds on an H100 incl. ~8 s of process start and data):
# the estimates come from the 2026-11-27 H100 runs (budget-net 7.3 ms/step compiled, 3.7 ms with
# reduce-overhead, ~36 s cold compile; s8-net 6.8 ms/step, 32 s compile) and the profile's kernel time.
PLAN = [
    ("fake", "budget-net", "graph", 2, 15),
    ("fake", "budget-net", "eager", 2, 15),
    ("real", "budget-net", "graph", 20, 15),
    ("real", "budget-net", "eager", 20, 30),
    ("real", "s8-net", "graph", 20, 16),
    ("real", "s8-net", "eager", 20, 40),
    ("real", "budget-net", "graph+compile", 20, 50),
    ("real", "budget-net", "compile", 20, 40),
    ("real", "budget-net", "reduce-overhead", 20, 45),
    ("real", "s8-net", "graph+compile", 20, 45),
    ("real", "s8-net", "compile", 20, 50),
    ("real", "s8-net", "reduce-overhead", 20, 50),
]
DEVICE = "cuda"
ENV = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}", "CIFARLAB_NO_PROGRESS": "1",
       "PYTHONUNBUFFERED": "1"}


def holds_cifar(folder: str | None) -> bool:
    if not folder:
        return False
    p = Path(folder)
    return (p / "train").is_dir() or (p / "cifar-10-batches-py").is_dir() or (p / "data_batch_1").is_file()


class Check:
    def __init__(self, results: Path, work: Path, budget_s: float) -> None:
        self.results, self.work, self.budget_s = results, work, budget_s
        self.start = time.perf_counter()
        self.log = (results / "step_check.log").open("a")
        self.rows: list[dict] = []
        self.histories: dict[str, dict] = {}

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.start)

    def say(self, line: str) -> None:
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def command(self, cmd: list[str], timeout: float) -> subprocess.CompletedProcess | str:
        """Run `cmd` from the repository root; the process, or why it did not finish."""
        self.log.write(f"$ {' '.join(map(str, cmd))}\n")
        try:
            proc = subprocess.run(list(map(str, cmd)), cwd=ROOT, env=ENV, capture_output=True, text=True,
                                  timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            return f"timed out after {timeout:.0f} s"
        self.log.write(proc.stdout + proc.stderr + f"(exit {proc.returncode})\n")
        self.log.flush()
        return proc

    def tests(self) -> None:
        try:
            import pytest  # noqa: F401
        except ImportError:
            self.say("tests: skipped (pytest is not installed)")
            return
        t0 = time.perf_counter()
        proc = self.command([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                             "tests/test_step.py", "-k", "on_cuda"], self.left() - 60)
        if isinstance(proc, str):
            self.say(f"tests: {proc}")
            return
        summary = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
        self.say(f"tests ({time.perf_counter() - t0:.0f} s): {summary}")
        for line in proc.stdout.splitlines():
            if line.startswith(("FAILED", "ERROR", "SKIPPED", "E  ")):
                self.say(f"  {line[:300]}")

    def train(self, data_kind: str, data_dir: str, model: str, mode: str, epochs: int, estimate: float) -> None:
        tag = f"{data_kind}-{model}-{mode}-{epochs}ep"
        row = {"data": data_kind, "model": model, "mode": mode, "epochs": epochs}
        if estimate > self.left():
            self.say(f"{tag}: skipped (~{estimate:.0f} s expected, {max(self.left(), 0):.0f} s of the budget left)")
            self.rows.append({**row, "note": "skipped: budget"})
            return
        out = self.work / tag
        cmd = [sys.executable, "-m", "cifarlab", "train", *MODELS[model], *MODES[mode], "--epochs", epochs,
               "--device", DEVICE, "--data", data_dir, "--out", out, "--overwrite"]
        t0 = time.perf_counter()
        proc = self.command(cmd, self.left())
        wall = time.perf_counter() - t0
        if isinstance(proc, str) or proc.returncode != 0:
            reason = proc if isinstance(proc, str) else \
                (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["no output"])[-1]
            self.say(f"{tag}: FAILED ({reason[:200]})")
            self.rows.append({**row, "wall_s": wall, "note": f"failed: {reason[:80]}"})
            return
        hist = json.loads((out / "history.json").read_text())
        self.histories[tag] = hist
        rows, meta = hist["epochs"], hist["meta"]
        loop = sum(r["train_seconds"] for r in rows)
        warnings = [line for line in proc.stdout.splitlines() if line.startswith("warning")]
        row.update(epochs=len(rows), loop_s=loop, train_s=meta["train_seconds"], warmup_s=meta["warmup_seconds"],
                   ms_step=1000 * loop / (meta["steps_per_epoch"] * len(rows)), test_acc=rows[-1]["test_acc"],
                   wall_s=wall, setup_s=meta.get("setup_seconds"), save_s=meta.get("save_seconds"),
                   graph=meta.get("cuda_graph"), compiled=meta.get("compiled"),
                   note="; ".join(w.removeprefix("warning: ").split("; training without")[0][:90] for w in warnings))
        self.rows.append(row)
        self.say(f"{tag}: {row['loop_s']:.2f} s loop, {row['train_s']:.2f} s with evaluation, "
                 f"{row['warmup_s']:.1f} s warm-up/compile, {row['ms_step']:.2f} ms/step, "
                 f"test {100 * row['test_acc']:.2f}%, {wall:.0f} s wall" + (f" [{row['note']}]" if row["note"] else ""))

    def table(self) -> str:
        def f(row: dict, key: str, fmt: str) -> str:
            return format(row[key], fmt) if row.get(key) is not None else "-"

        lines = ["| data | model | mode | epochs | train s (loop) | train s (+eval) | warm-up/compile s | ms/step "
                 "| test % | setup s | save s | wall s | note |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in self.rows:
            acc = f"{100 * r['test_acc']:.2f}" if r.get("test_acc") is not None else "-"
            lines.append(f"| {r['data']} | {r['model']} | {r['mode']} | {r['epochs']} | {f(r, 'loop_s', '.2f')} | "
                         f"{f(r, 'train_s', '.2f')} | {f(r, 'warmup_s', '.1f')} | {f(r, 'ms_step', '.2f')} | {acc} | "
                         f"{f(r, 'setup_s', '.1f')} | {f(r, 'save_s', '.1f')} | {f(r, 'wall_s', '.0f')} | "
                         f"{r.get('note', '')} |")
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path, help="folder for step_check.md, step_check.log, histories.json")
    p.add_argument("--data", default=os.environ.get("CIFARLAB_DATA"), help="real CIFAR-10 (default $CIFARLAB_DATA)")
    p.add_argument("--budget-s", type=float, default=360, help="skip runs that would end after this many seconds")
    p.add_argument("--work", type=Path, help="run folders and random data (default: a temp folder)")
    p.add_argument("--skip-tests", action="store_true", help="the CUDA tests already ran (e.g. in an earlier call)")
    args = p.parse_args(argv)

    import torch

    args.results.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="step-check-"))
    work.mkdir(parents=True, exist_ok=True)
    check = Check(args.results, work, args.budget_s)
    if not torch.cuda.is_available():
        check.say("no CUDA device: nothing to check")
        return 1
    check.say(f"step check on {torch.cuda.get_device_name()} (torch {torch.__version__}), "
              f"budget {args.budget_s:.0f} s, work in {work}")
    if not args.skip_tests:
        check.tests()

    from cifarlab.data import load_cifar10
    from fake_data import main as write_fake_data

    t0 = time.perf_counter()
    fake = work / "fake"
    write_fake_data(str(fake))
    load_cifar10(fake)  # decoded once here, so no run's wall time holds it
    real = args.data if holds_cifar(args.data) else None
    if real:
        load_cifar10(real)
    check.say(f"data ready in {time.perf_counter() - t0:.0f} s: random images in {fake}; "
              + (f"CIFAR-10 in {real}" if real else "no real CIFAR-10 (--data / $CIFARLAB_DATA): the 20-epoch "
                                                    "rows run on random images, accuracy is chance"))
    for data_kind, model, mode, epochs, estimate in PLAN:
        use_real = data_kind == "real" and real is not None
        check.train("real" if use_real else "fake", real if use_real else str(fake), model, mode, epochs, estimate)

    table = check.table()
    (args.results / "step_check.md").write_text(table + "\n")
    (args.results / "histories.json").write_text(json.dumps(check.histories, indent=1) + "\n")
    check.say("\n" + table)
    check.say(f"done in {time.perf_counter() - check.start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
