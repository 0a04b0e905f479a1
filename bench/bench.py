"""cifarlab benchmark: prints one table; results go to BENCHMARKS.md by hand with date and device.

  python bench/bench.py gpu [--seeds 5] [--out DIR] [--tuned SWEEP_DIR...]   accuracy/speed table (the issue-5 rows; needs CUDA)
  python bench/bench.py cpu [--model s8-net] [--batch-size 128]  CPU data-path cost: cifarlab loop vs bare model
                                                      vs a conventional per-sample DataLoader pipeline
Not a test: nothing here asserts; it measures.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from cifarlab.config import OptimConfig, RegConfig, TrainConfig  # noqa: E402
from cifarlab.data import load_cifar10, make_splits  # noqa: E402
from cifarlab.malloc import keep_freed_memory  # noqa: E402
from cifarlab.models import create_model  # noqa: E402
from cifarlab.store import Store  # noqa: E402
from cifarlab.train import train  # noqa: E402


def _ms(values) -> str:
    vals = [100 * v for v in values if v is not None]
    if not vals:
        return "-"
    return f"{statistics.mean(vals):.2f} +/- {statistics.stdev(vals) if len(vals) > 1 else 0.0:.2f}"


def gpu(args: argparse.Namespace) -> None:
    from cifarlab.study import load_spec, run_study

    rows = []
    budget = ROOT / "studies/budget.toml"
    if args.tuned:  # the recipes the validation sweep chose, one per norm, instead of the shipped one
        from tuned import spec_text

        budget = Path(args.out) / "budget-tuned.toml"
        budget.parent.mkdir(parents=True, exist_ok=True)
        budget.write_text(spec_text(args.tuned, "budget-tuned", args.seeds))
        print(f"budget-net rows from the validation sweeps in {', '.join(args.tuned)} ({budget})")
    for spec_path in (budget, ROOT / "bench/s8.toml"):
        spec = load_spec(spec_path)
        folder = run_study(spec, out=Path(args.out) / spec.name, seeds=args.seeds, jobs=1)
        with Store(folder) as store:
            runs = store.runs()
        for exp in spec.experiments:
            rs = [r for r in runs if r.experiment == exp.name]
            cfg = exp.config
            n_img = 50000 - cfg.data.val if not cfg.data.subset else cfg.data.subset
            ips = [n_img // cfg.train.batch_size * cfg.train.batch_size * r.epochs / sum(
                e.get("train_seconds", e["seconds"]) for e in r.history) for r in rs]
            rows.append((cfg.model.name, exp.name, rs[0].params, rs[0].epochs, len(rs), _ms(r.test_acc for r in rs),
                         _ms(r.test_acc_tta for r in rs), _ms(r.test_acc_tta6 for r in rs), statistics.mean(r.seconds for r in rs),
                         statistics.mean(r.warmup_seconds for r in rs), statistics.mean(ips), rs[0].device))
    print("\n| model | row | params | epochs | n | test % | flip-TTA % | 6-view TTA % | s/run (warm) | compile s "
          "| train img/s | device |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:,} | {r[3]} | {r[4]} | {r[5]} | {r[6]} | {r[7]} | {r[8]:.1f} | {r[9]:.1f} | "
              f"{r[10]:,.0f} | {r[11]} |")


class _PerSample(torch.utils.data.Dataset):
    """The conventional pipeline: one PIL image at a time through torchvision-style transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean, std) -> None:
        self.images, self.labels = images, labels
        try:
            import torchvision.transforms as T

            self.transform = T.Compose([T.RandomCrop(32, padding=4, padding_mode="reflect"),
                                        T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
            self.kind = "torchvision transforms"
        except ImportError:  # no torchvision for the CPU build of torch: the same steps, per sample
            self.transform = self._manual
            self.mean, self.std = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
            self.kind = "per-sample PIL/torch transforms (torchvision not installed)"

    def _manual(self, img):
        from PIL import ImageOps

        arr = np.pad(np.asarray(img), ((4, 4), (4, 4), (0, 0)), mode="reflect")
        dy, dx = np.random.randint(0, 9, 2)
        arr = arr[dy: dy + 32, dx: dx + 32]
        if np.random.rand() < 0.5:
            arr = arr[:, ::-1]
        t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float().div(255)
        return (t - self.mean) / self.std

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def cpu(args: argparse.Namespace) -> None:
    # Every pipeline below gets the allocator setting cifarlab's loop uses (train() sets it on CPU
    # anyway); CIFARLAB_MALLOC=default measures all of them with glibc's defaults instead.
    kept = keep_freed_memory()
    bs, n = args.batch_size, args.images
    ds = load_cifar10(args.data)
    splits = make_splits(ds, subset=n)
    torch.manual_seed(0)

    def fresh_model():
        return create_model(args.model, norm="bn")

    def step_fn(model, opt):
        def step(xb, yb):
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    steps = n // bs
    results = {}
    for rep in range(args.repeats):
        # 1. bare model: one fixed batch, no data work at all
        model = fresh_model()
        step = step_fn(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, foreach=True))
        xb, yb = splits.train.x[:bs], splits.train.y[:bs]
        step(xb, yb)
        t0 = time.perf_counter()
        for _ in range(steps):
            step(xb, yb)
        results.setdefault("bare model (fixed batch)", []).append(steps * bs / (time.perf_counter() - t0))

        # 2. cifarlab's loop: shuffled batches, crop+flip on the device, same optimizer
        # Same step as the bare model (plain momentum SGD, constant lr, plain cross-entropy), so
        # the difference is the data path: shuffling, gathering, crop+flip, metric accumulation.
        cfg = TrainConfig(epochs=2, batch_size=bs, augment="crop", compile="off", device="cpu",
                          optim=OptimConfig(lr=0.05, nesterov=False, weight_decay=0.0, schedule="none"),
                          reg=RegConfig(label_smoothing=0.0))
        h = train(fresh_model(), splits, cfg, log=None)
        loop = h.rows[-1]["train_seconds"]  # second epoch: warm
        results.setdefault("cifarlab loop (crop+flip)", []).append(steps * bs / loop)

        # 3. conventional per-sample DataLoader
        for workers in (0, 2):
            per_sample = _PerSample(ds.train_x[:n], ds.train_y[:n], splits.mean, splits.std)
            loader = torch.utils.data.DataLoader(per_sample, batch_size=bs, shuffle=True, drop_last=True,
                                                 num_workers=workers, persistent_workers=workers > 0)
            model = fresh_model()
            step = step_fn(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, foreach=True))
            for _ in range(2):  # second pass timed (workers started, caches warm)
                t0 = time.perf_counter()
                for xb, yb in loader:
                    step(xb, yb)
                seconds = time.perf_counter() - t0
            key = f"DataLoader, {per_sample.kind}, workers={workers}"
            results.setdefault(key, []).append(steps * bs / seconds)
    bare = statistics.mean(results["bare model (fixed batch)"])
    print(f"\nCPU data path, {args.model} (bn), batch {bs}, {steps} steps per pass, {torch.get_num_threads()} threads, "
          f"{args.repeats} repeat(s), torch {torch.__version__}, freed memory kept: {kept}")
    print("| pipeline | train images/s, mean (range) | vs bare model |\n|---|---|---|")
    for key, vals in results.items():
        ips = statistics.mean(vals)
        spread = f"{min(vals):,.0f}-{max(vals):,.0f}"
        print(f"| {key} | {ips:,.0f} ({spread}) | {100 * (ips / bare - 1):+.1f}% |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="mode", required=True)
    g = sub.add_parser("gpu")
    g.add_argument("--seeds", type=int, default=5)
    g.add_argument("--out", default="runs/bench")
    g.add_argument("--tuned", metavar="SWEEP_DIR", nargs="+",
                   help="budget-net rows: each norm's best trial of these validation sweeps (bench/tuned.py)")
    c = sub.add_parser("cpu")
    c.add_argument("--model", default="s8-net")
    c.add_argument("--batch-size", type=int, default=128)
    c.add_argument("--images", type=int, default=5120, help="training images per pass")
    c.add_argument("--repeats", type=int, default=2)
    c.add_argument("--data", default=None)
    args = p.parse_args()
    torch.set_float32_matmul_precision("high")
    (gpu if args.mode == "gpu" else cpu)(args)


if __name__ == "__main__":
    main()
