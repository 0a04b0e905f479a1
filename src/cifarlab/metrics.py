"""The per-epoch metrics of a run, named once: the training loop, the run folder (history.csv), the
study store and the report all read this list, so a new metric is one line here."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str  # history key, history.csv column, store column
    label: str  # in the epoch log line
    fmt: str  # format spec for the log line and history.csv
    final: bool = False  # its final-epoch value is a column of the study store


METRICS = (
    Metric("epoch", "Epoch", "d"),
    Metric("train_loss", "loss", ".4f"),
    Metric("train_acc", "acc", ".4f", final=True),  # on the augmented training batches of the epoch
    Metric("val_loss", "val_loss", ".4f"),
    Metric("val_acc", "val_acc", ".4f", final=True),
    Metric("test_loss", "test_loss", ".4f"),
    Metric("test_acc", "test_acc", ".4f", final=True),
    Metric("test_acc_tta", "test_acc_tta", ".4f", final=True),  # flip TTA, every epoch with --tta
    Metric("test_acc_tta6", "test_acc_tta6", ".4f", final=True),  # flip x 3 shifts, last epoch with --tta
    Metric("lr", "lr", ".3g"),
    Metric("seconds", "", ".1f"),  # the whole epoch, evaluation included
    Metric("train_seconds", "", ".1f"),  # the training loop alone
)
COLUMNS = tuple(m.name for m in METRICS)
FINAL = tuple(m.name for m in METRICS if m.final)
# Shown in each epoch's log line, in this order (epoch and seconds are written separately).
LOGGED = tuple(m for m in METRICS if m.label and m.name != "epoch")
