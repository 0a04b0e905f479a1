"""Record golden training histories: `PYTHONPATH=src python tests/data/make_golden.py [OUT.json]`.

Writes tests/data/golden_histories.<CPU kernel set>.json (`kernel_set()`); `ATEN_CPU_CAPABILITY=avx2` records
the AVX2 set on an AVX512 machine without AMX. The AVX512-AMX set was recorded from the commit it names (the
loop before issue 28 gave it K seeds together), on the first AMX machine the suite met.

Each entry trains one tiny configuration on generated CIFAR-shaped images (no files needed) through
`run_experiment`, on CPU in fp32 with one thread, and stores every history value plus the contents
of predictions.npz. tests/test_step.py replays the same configurations and asserts that the
training loop still produces exactly these numbers. The stored file was produced from the commit
it names, before the loop was rebuilt around one step (issue 11); regenerate it only to
re-baseline on purpose, and say why in the commit.
"""
from __future__ import annotations

import base64
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from cifarlab.config import DataConfig, ModelConfig, OptimConfig, RegConfig, RunConfig, TrainConfig, to_dict
from cifarlab.data import CLASSES, Cifar10, make_splits
from cifarlab.experiment import run_experiment

HERE = Path(__file__).resolve().parent


def kernel_set() -> str:
    """torch's CPU capability, with "-AMX" on processors with AMX tiles: their fp32 training rounds
    differently again (seen 2026-12-04: every AVX512 history moved in its 4th-6th digit, also with
    ATEN_CPU_CAPABILITY=avx2 and oneDNN held below AMX, so the choice is not one that can be turned off)."""
    capability = torch.backends.cpu.get_cpu_capability()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    return capability + ("-AMX" if " amx_tile" in flags else "")


def golden_path(kernels: str | None = None) -> Path:
    """One file per CPU kernel set: AVX2, AVX512 and AVX512 with AMX round differently (1e-5 after 2 epochs)."""
    return HERE / f"golden_histories.{kernels or kernel_set()}.json"


TIMINGS = ("seconds", "train_seconds")  # wall-clock columns: never compared


def generated_cifar(n_train: int = 400, n_test: int = 100, seed: int = 1234) -> Cifar10:
    """Random 32x32 RGB images whose brightness and one colour channel depend on the label (learnable)."""
    rng = np.random.default_rng(seed)

    def part(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 10, size=n)
        x = rng.integers(0, 128, size=(n, 32, 32, 3)) + 10 * y[:, None, None, None]
        x[np.arange(n), :, :, y % 3] += 20
        return x.clip(0, 255).astype(np.uint8), y.astype(np.int64)

    train_x, train_y = part(n_train)
    test_x, test_y = part(n_test)
    return Cifar10(train_x, train_y, test_x, test_y, CLASSES, "generated")


def _cfg(model: str, options: dict, val: int = 0, optim: dict | None = None, reg: dict | None = None,
         **train) -> RunConfig:
    base = dict(epochs=2, batch_size=64, seed=0, augment="crop", device="cpu", compile="off", precision="fp32")
    base.update(train)
    return RunConfig(data=DataConfig(val=val), model=ModelConfig(model, options),
                     train=TrainConfig(optim=OptimConfig(**(optim or {})), reg=RegConfig(**(reg or {})), **base))


# name -> (config, the equivalent command line on a folder holding the generated images)
CONFIGS: dict[str, tuple[RunConfig, str]] = {
    "budget-bn-whiten-linear": (
        _cfg("budget-net", {"whiten": True}, optim=dict(lr=0.2, schedule="linear", warmup=0.2)),
        "cifarlab train --model budget-net -O whiten=true --batch-size 64 --epochs 2 --lr 0.2 --schedule linear "
        "--device cpu --compile off --precision fp32"),
    "s8-gn-altflip-ema-onecycle-dropout": (
        _cfg("s8-net", {"norm": "gn", "width": 8, "dropout": 0.1}, epochs=3, batch_size=32, alt_flip=True, ema=0.9,
             optim=dict(lr=0.1, schedule="onecycle")),
        "cifarlab train --model s8-net --norm gn -O width=8 --dropout 0.1 --batch-size 32 --epochs 3 --alt-flip "
        "--ema 0.9 --lr 0.1 --schedule onecycle --device cpu --compile off --precision fp32"),
    "s8-bn-flip-tta-val-step-l1l2": (
        _cfg("s8-net", {"norm": "bn", "width": 8}, val=60, epochs=3, batch_size=48, augment="flip", tta=True,
             optim=dict(lr=0.1, schedule="step", step_epochs=1, gamma=0.5), reg=dict(l2_conv=1e-3, l1_conv=1e-4)),
        "cifarlab train --model s8-net --norm bn -O width=8 --val 60 --epochs 3 --batch-size 48 --augment flip "
        "--tta --lr 0.1 --schedule step --step-epochs 1 --gamma 0.5 --l2-conv 1e-3 --l1-conv 1e-4 "
        "--device cpu --compile off --precision fp32"),
    "s8-ln-adamw-plateau-none": (
        _cfg("s8-net", {"norm": "ln", "width": 8}, val=60, epochs=5, batch_size=40, augment="none",
             optim=dict(name="adamw", lr=0.03, schedule="plateau", patience=0, gamma=0.5),
             reg=dict(label_smoothing=0.0, l2_conv=1e-4)),
        "cifarlab train --model s8-net --norm ln -O width=8 --val 60 --epochs 5 --batch-size 40 --augment none "
        "--optimizer adamw --lr 0.03 --schedule plateau --gamma 0.5 --label-smoothing 0 --l2-conv 1e-4 "
        "--device cpu --compile off --precision fp32 (and optim.patience = 0, which has no flag: a spec file sets it)"),
    "budget-gn-dirac-ema-tta-altflip": (
        _cfg("budget-net", {"norm": "gn", "dirac": True, "w1": 16, "w2": 16, "w3": 16}, ema=0.95, tta=True,
             alt_flip=True, optim=dict(lr=0.1, schedule="linear", norm_lr_scale=4.0)),
        "cifarlab train --model budget-net --norm gn -O dirac=true -O w1=16 -O w2=16 -O w3=16 --batch-size 64 "
        "--epochs 2 --ema 0.95 --tta --alt-flip --lr 0.1 --schedule linear --norm-lr-scale 4 "
        "--device cpu --compile off --precision fp32"),
}


def run_one(cfg: RunConfig, data_source: Cifar10) -> dict:
    """Train `cfg` on the generated images; the history without timings and predictions.npz's arrays."""
    data = make_splits(data_source, val=cfg.data.val, subset=cfg.data.subset, seed=cfg.data.split_seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "run"
            history = run_experiment(cfg, out, data=data, log=None)
            with np.load(out / "predictions.npz") as z:
                probs, labels = z["probs"], z["labels"]
    finally:
        torch.set_num_threads(threads)
    return {
        "rows": [{k: v for k, v in row.items() if k not in TIMINGS} for row in history.rows],
        "steps_per_epoch": history.meta["steps_per_epoch"],
        # The float16 probabilities as base64 of their little-endian bytes: exact, and 2.7 kB instead of 20.
        "predictions": {"dtype": str(probs.dtype), "shape": list(probs.shape),
                        "probs_b64": base64.b64encode(probs.astype("<f2").tobytes()).decode(),
                        "labels": labels.tolist()},
    }


def environment() -> dict:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=HERE, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--", "../../src")),
            "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": 1}


def main(path: str | None = None) -> None:
    source = generated_cifar()
    runs = {}
    for name, (cfg, command) in CONFIGS.items():
        runs[name] = {"command": command, "config": to_dict(cfg), **run_one(cfg, source)}
        print(f"{name}: {[round(r['test_acc'], 4) for r in runs[name]['rows']]}")
    doc = {"about": "Golden histories of tests/data/make_golden.py's configurations on generated_cifar() "
                    "(400 train / 100 test images, seed 1234); CPU, fp32, one thread.",
           "environment": environment(), "runs": runs}
    Path(path or golden_path()).write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
