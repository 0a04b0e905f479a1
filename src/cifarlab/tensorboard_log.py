"""`--tensorboard DIR`: each epoch's losses, accuracies and learning rate as TensorBoard scalars.

A run option like --out, not a setting of the run (RunConfig): it changes no result, so adding it
to a resumed run or study does not make its finished runs look changed. One run per folder, so that
`tensorboard --logdir DIR` lists them side by side: `cifarlab train --out runs/NAME` writes to
DIR/NAME, a study's runs to DIR/<study folder's name>/<experiment>/seed-<k>. A resumed run adds its
new epochs to the same folder. Written from the history rows (train.train's `on_epoch`), never from
inside the loop.
Needs the `tensorboard` package, which torch.utils.tensorboard uses: the `tensorboard` extra.
"""
from __future__ import annotations

import os
from contextlib import AbstractContextManager
from pathlib import Path

from cifarlab.errors import ConfigError

# history column -> scalar tag: one chart per quantity, train / val / test on charts of their own group.
TAGS = {"train_loss": "loss/train", "val_loss": "loss/val", "test_loss": "loss/test",
        "train_acc": "accuracy/train", "val_acc": "accuracy/val", "test_acc": "accuracy/test",
        "test_acc_tta": "accuracy/test_flip_tta", "lr": "learning_rate"}


def require_tensorboard() -> None:
    """A one-line ConfigError (exit 2) with the install line when the tensorboard package is missing."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install 'cifarlab[tensorboard]' "
                          "(or pip install tensorboard)") from None


def prepare(folder: str | os.PathLike) -> Path:
    """Check, before any training, what writing scalars into `folder` needs: the package and the folder
    (made now: one that cannot be would otherwise stop a run after its first epoch). One line if not."""
    require_tensorboard()
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--tensorboard: cannot create '{folder}' ({exc.strerror})") from None
    return folder


class EpochScalars(AbstractContextManager):
    """An `on_epoch(row)` callback writing a history row's metrics at step = epoch into `folder`."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = prepare(folder)
        self.writer = None  # made at the first epoch: a run refused before training leaves no event file

    def __call__(self, row: dict) -> None:
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.folder))
        for key, tag in TAGS.items():
            if key in row:
                self.writer.add_scalar(tag, row[key], row["epoch"])
        self.writer.flush()  # each epoch visible at once in a TensorBoard that is watching

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def __exit__(self, *exc) -> None:
        self.close()
