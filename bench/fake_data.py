"""Write random CIFAR-10-shaped python batches (50,000 train / 10,000 test) to DIR/cifar-10-batches-py.

For timing the training path on a machine where the real data has not arrived yet; accuracy is chance.
"""
import pickle
import sys
from pathlib import Path

import numpy as np

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def main(root: str) -> None:
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)

    def dump(name: str, n: int) -> None:
        x = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, size=n)]
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": x, "labels": y}, fh)

    for i in range(1, 6):
        dump(f"data_batch_{i}", 10000)
    dump("test_batch", 10000)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": CLASSES}, fh)
    print(f"fake CIFAR-10 batches in {folder}")


if __name__ == "__main__":
    main(sys.argv[1])
