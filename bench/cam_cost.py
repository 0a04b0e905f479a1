"""What the Grad-CAM maps of a run's mistakes cost at training time (issue 15).

    python bench/cam_cost.py [DATA_DIR] [--threads N] [--repeats 5]

Times `explain.save_explanations` (ranking all test mistakes, Grad-CAM of the 24 most confident for the
predicted and the true class, writing cams.npz) on s8-net and budget-net (-O whiten=true) as
`run_experiment` calls it after the last epoch, next to one evaluation of the test set for scale.
Untrained weights: the cost does not depend on them.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from cifarlab.data import load_cifar10, make_splits
from cifarlab.experiment import layers_json
from cifarlab.explain import save_explanations
from cifarlab.models import create_model
from cifarlab.train import History, predict


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", nargs="?", help="CIFAR-10 folder (default: $CIFARLAB_DATA, then ./data)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    splits = make_splits(load_cifar10(args.data))
    for name, options in (("s8-net", {}), ("budget-net", {"whiten": True})):
        torch.manual_seed(0)
        model = create_model(name, **options)
        if hasattr(model, "init_from_data"):
            model.init_from_data(splits.train.x[:2000])
        layers = layers_json(model)
        t0 = time.perf_counter()
        history = History(test_logits=predict(model, splits.test.x, 2000))
        evaluation = time.perf_counter() - t0
        times = []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as folder:
                t0 = time.perf_counter()
                save_explanations(Path(folder), model, splits, history, layers, print)
                times.append(time.perf_counter() - t0)
                size = (Path(folder) / "cams.npz").stat().st_size
        print(f"{name}: {1000 * statistics.median(times):.0f} ms median ({1000 * min(times):.0f}-"
              f"{1000 * max(times):.0f}, n={args.repeats}, {args.threads} threads); cams.npz {size / 1024:.0f} KiB; "
              f"one test-set evaluation {evaluation:.1f} s")


if __name__ == "__main__":
    main()
