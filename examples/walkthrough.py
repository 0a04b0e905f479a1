"""Your own model with cifarlab: the command line first, then the same from Python, as in a notebook.

    python examples/walkthrough.py                      # writes runs/example/ (8 minutes on a busy 2-core CPU)
    python examples/walkthrough.py --out DIR --epochs 1 --subset 500

CIFAR-10 is looked up as everywhere in cifarlab: $CIFARLAB_DATA, then ./data. The steps: the layer table of
course_net.py (receptive fields, parameters, the 50k budget), one training run from the command line, the
BN/GN/LN study of norms.toml with its report, then a layer table and a training run from Python.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import cifarlab

HERE = Path(__file__).resolve().parent
NET = f"{HERE / 'course_net.py'}:Net"  # FILE.py:NAME, the way every cifarlab command names your model


def cli(*args: object) -> None:
    """Run one `cifarlab` command as you would type it (printed first), stopping at the first failure."""
    print("$ cifarlab", " ".join(map(str, args)), flush=True)
    subprocess.run([sys.executable, "-m", "cifarlab", *map(str, args)], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/example"), help="where the runs go")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per training run (default 2)")
    parser.add_argument("--subset", type=int, default=2000, help="training images per run (default 2000)")
    args = parser.parse_args()
    quick = ["--epochs", args.epochs, "--subset", args.subset]

    # 1. The command line.
    cli("inspect", NET, "--norm", "ln", "--max-params", "50000")
    cli("train", "--model", NET, "--norm", "gn", *quick, "--out", args.out / "gn", "--overwrite")
    cli("study", HERE / "norms.toml", "--out", args.out / "study", "--report")  # BN, GN and LN side by side

    # 2. Python: the model is an object you built; cifarlab.fit trains it in place.
    sys.path.insert(0, str(HERE))
    from course_net import Net

    model = Net(norm="gn", groups=2)
    print(cifarlab.layer_table(model, format="table"))
    history = cifarlab.fit(model, epochs=args.epochs, subset=args.subset, out=args.out / "api-gn", overwrite=True)
    print(f"from Python: test accuracy {history.final['test_acc']:.4f} after {len(history.rows)} epochs, "
          f"run folder {args.out / 'api-gn'}")


if __name__ == "__main__":
    main()
