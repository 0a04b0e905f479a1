"""Pilot: budget-net with its global max-pool vs the same net with a global average pool (same parameters).

  python bench/pool_pilot.py {max,avg} SEED   -> one JSON line: per-epoch val accuracy

Default TrainConfig recipe, 5,000 training images beside a 5,000-image validation split (split seed
0), 5 epochs, 1 CPU thread. The test set is cut to 500 images and never read for the verdict. The
2026-11-27 result (n=3 seeds each) is in budget_net.py's docstring and BENCHMARKS.md.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from cifarlab.config import TrainConfig  # noqa: E402
from cifarlab.data import load_cifar10, make_splits  # noqa: E402
from cifarlab.models import create_model  # noqa: E402
from cifarlab.train import seed_everything, train  # noqa: E402


def main(variant: str, seed: int) -> None:
    torch.set_num_threads(1)
    data = make_splits(load_cifar10(None), val=5000, subset=5000, seed=0)
    data = replace(data, test=replace(data.test, x=data.test.x[:500], y=data.test.y[:500]))
    seed_everything(seed)
    model = create_model("budget-net")
    if variant == "avg":
        model.pool = nn.AdaptiveAvgPool2d(1)
    cfg = TrainConfig(epochs=5, seed=seed, device="cpu", compile="off", precision="fp32")
    t0 = time.time()
    h = train(model, data, cfg, log=None)
    print(json.dumps({"variant": variant, "seed": seed, "val_acc": [round(r["val_acc"], 4) for r in h.rows],
                      "train_acc": round(h.final["train_acc"], 4), "seconds": round(time.time() - t0)}), flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("max", "avg"):
        raise SystemExit(__doc__.strip().splitlines()[2].strip())
    main(sys.argv[1], int(sys.argv[2]))
