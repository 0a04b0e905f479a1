"""`cifarlab data`: find (or download), verify and cache CIFAR-10, and say what was found."""
from __future__ import annotations

import argparse
import time


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="find or download CIFAR-10, decode it into the cache, print a summary",
                       description="Look for CIFAR-10 in --data, $CIFARLAB_DATA, ./data (official python "
                                   "batches or train/ test/ image folders); with --download fetch it into "
                                   "./data when none is found. Decodes once into a cache beside the data.")
    p.add_argument("--data", metavar="DIR", help="CIFAR-10 folder (default: $CIFARLAB_DATA, then ./data)")
    p.add_argument("--download", action="store_true", help="download into ./data if not found (torchvision)")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from cifarlab.data import load_cifar10

    t0 = time.perf_counter()
    ds = load_cifar10(args.data, args.download)
    seconds = time.perf_counter() - t0
    train_counts = np.bincount(ds.train_y, minlength=len(ds.classes))
    test_counts = np.bincount(ds.test_y, minlength=len(ds.classes))
    mean = ds.train_x.reshape(-1, 3).mean(0) / 255.0
    print(f"CIFAR-10 from {ds.source} ({seconds:.1f}s)")
    print(f"train {len(ds.train_y):,} images, test {len(ds.test_y):,}; per class train "
          f"{train_counts.min():,}-{train_counts.max():,}, test {test_counts.min():,}-{test_counts.max():,}")
    print(f"classes: {', '.join(ds.classes)}")
    print(f"train mean (RGB): ({mean[0]:.4f}, {mean[1]:.4f}, {mean[2]:.4f})")
    return 0
