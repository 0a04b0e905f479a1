"""Shared by the predict / Grad-CAM / lr-find / export tests: tiny data, tiny trained runs, a model file."""
from __future__ import annotations

import textwrap
from pathlib import Path

from conftest import write_image_folder

FAST = {"device": "cpu", "compile": "off", "augment": "none", "batch_size": 16, "epochs": 1, "log": None}

# A course-style model file that leaves a mark each time it is imported: the trust tests count the marks.
# `import os` on purpose: a forged config may name `os.makedirs` as the model's object.
MARKED_NET = '''
import os
import torch.nn as nn

with open({marker!r}, "a") as fh:
    fh.write("imported\\n")


class Net(nn.Module):
    def __init__(self, width: int = 8):
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(inplace=True), nn.BatchNorm2d(width))
        self.c2 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True))
        self.pool = nn.MaxPool2d(2)
        self.c3 = nn.Conv2d(width, width, 3, padding=1)
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        x = self.pool(self.c2(self.c1(x)))  # (B, w, 16, 16)
        x = self.c3(x).relu().mean((2, 3))
        return self.head(x)
'''


def write_data(root: Path, n_train: int = 8, n_test: int = 4, seed: int = 0) -> Path:
    """A tiny image-folder CIFAR-10 at `root`, 8 train and 4 test images per class by default."""
    return write_image_folder(root, n_train, n_test, seed)


def write_model_file(folder: Path, marker: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "marked_net.py"
    path.write_text(textwrap.dedent(MARKED_NET.format(marker=str(marker))))
    return path


def train_run(out: Path, data: Path, model: str = "s8-net", options: dict | None = None, **settings) -> Path:
    """Train a tiny run folder in-process (as `cifarlab train --out` writes it)."""
    import cifarlab

    kwargs = {**FAST, **settings}
    if options is None and model == "s8-net":
        options = {"width": 8}
    cifarlab.fit(model, options=options, data=data, out=out, **kwargs)
    return out
