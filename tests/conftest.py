"""Shared fixtures: tiny generated CIFAR-10 folders (good and broken), the real copy, and CLI runners."""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from cifarlab.data import CLASSES

REPO = Path(__file__).resolve().parents[1]

# A suite started in the background by a script (`make test &`, `nohup make test &`) inherits SIGINT
# ignored, and so does every cifarlab it starts: the tests that press Ctrl-C (send SIGINT) then waited
# for a 1000-epoch run to end and saw exit 0 (two runs on 2026-11-27). A Python handler here becomes
# the default in each child, which is what a terminal's Ctrl-C meets.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _quiet_and_isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    """No progress bars, no data folder picked up from the developer's shell or cwd by accident."""
    monkeypatch.setenv("CIFARLAB_NO_PROGRESS", "1")
    monkeypatch.delenv("CIFARLAB_DATA", raising=False)


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread: tiny tensors on two shared cores run faster than with two threads fighting."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# Tiny image folders


def save_png(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array (H, W[, C]) as a PNG; mode follows the array's shape."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def random_image(rng: np.random.Generator, label: int, shape: tuple[int, ...] = (32, 32, 3)) -> np.ndarray:
    """A random uint8 image whose mean brightness depends on `label`, so a model can learn the classes."""
    base = rng.integers(0, 128, size=shape)
    return (base + 12 * label).clip(0, 255).astype(np.uint8)


def write_image_folder(root: Path, n_train: int = 6, n_test: int = 2, seed: int = 0) -> Path:
    """`root/{train,test}/<class>/NNN.png`: n_train and n_test learnable random images per class."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for label, cls in enumerate(CLASSES):
            for i in range(n):
                save_png(root / split / cls / f"{i:03d}.png", random_image(rng, label))
    return root


# The [train] table of the tests' tiny study specs: one epoch, small batches, on the CPU, uncompiled.
TINY_TRAIN = """[train]
epochs = 1
batch_size = 16
augment = "none"
device = "cpu"
compile = "off"
"""


@dataclass
class TinyFolder:
    """A generated image-folder copy of CIFAR-10: `root/{train,test}/<class>/NNN.png`."""

    root: Path
    n_train: int  # images per class in train/
    n_test: int  # images per class in test/

    def image(self, split: str, cls: str, index: int = 0) -> Path:
        return self.root / split / cls / f"{index:03d}.png"


@pytest.fixture
def make_folder(tmp_path: Path) -> Callable[..., TinyFolder]:
    """Factory: `make_folder(name="data", n_train=6, n_test=2, seed=0)` writes a valid tiny folder.

    Tests break the result themselves (delete a class folder, overwrite an image) to make bad variants.
    """

    def make(name: str = "data", n_train: int = 6, n_test: int = 2, seed: int = 0) -> TinyFolder:
        return TinyFolder(write_image_folder(tmp_path / name, n_train, n_test, seed), n_train, n_test)

    return make


@pytest.fixture
def tiny_folder(make_folder) -> TinyFolder:
    """A valid tiny folder: 6 train and 2 test images per class (60 / 20)."""
    return make_folder()


# The broken variants each test of bad input uses: name -> (how to break a tiny folder, a word the error names).
def _remove_class(folder: TinyFolder) -> str:
    import shutil

    shutil.rmtree(folder.root / "train" / "cat")
    return "'cat'"


def _wrong_size(folder: TinyFolder) -> str:
    path = folder.image("train", "dog", 1)
    save_png(path, np.zeros((31, 32, 3), dtype=np.uint8))  # PIL size is (W, H) = (32, 31)
    return "32x31"


def _rgba(folder: TinyFolder) -> str:
    path = folder.image("test", "ship", 0)
    save_png(path, np.zeros((32, 32, 4), dtype=np.uint8))
    return "RGBA"


def _grayscale(folder: TinyFolder) -> str:
    path = folder.image("train", "frog", 2)
    save_png(path, np.zeros((32, 32), dtype=np.uint8))
    return "32x32 L"


def _truncated(folder: TinyFolder) -> str:
    path = folder.image("train", "horse", 3)
    path.write_bytes(path.read_bytes()[:200])  # header intact, image data cut short
    return "horse"


def _garbage(folder: TinyFolder) -> str:
    path = folder.image("train", "bird", 4)
    path.write_bytes(b"this is not a png at all" * 20)
    return "bird"


BREAKAGES: dict[str, Callable[[TinyFolder], str]] = {
    "missing-class": _remove_class,
    "not-32x32": _wrong_size,
    "rgba": _rgba,
    "grayscale": _grayscale,
    "truncated-png": _truncated,
    "garbage-png": _garbage,
}


@pytest.fixture(params=sorted(BREAKAGES))
def broken_folder(request, make_folder) -> tuple[TinyFolder, str]:
    """Each broken variant in turn: (folder, text the one-line error must contain)."""
    folder = make_folder()
    return folder, BREAKAGES[request.param](folder)


# ---------------------------------------------------------------------------------------------
# Official python batches


def write_batches(root: Path, per_batch: int = 10, n_test: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Write tiny `cifar-10-batches-py/` pickles under `root`; return (train_x NHWC uint8, train_y)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    xs, ys = [], []

    def batch(n: int) -> tuple[np.ndarray, list[int]]:
        x = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)  # official layout: channel-major rows
        return x, [int(v) for v in rng.integers(0, 10, size=n)]

    for i in range(1, 6):
        x, y = batch(per_batch)
        xs.append(x)
        ys.extend(y)
        with open(folder / f"data_batch_{i}", "wb") as fh:
            pickle.dump({"data": x.reshape(per_batch, 3072), "labels": y, "batch_label": f"batch {i}"}, fh)
    x, y = batch(n_test)
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({"data": x.reshape(n_test, 3072), "labels": y}, fh)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": list(CLASSES), "num_vis": 3072}, fh)
    return np.concatenate(xs).transpose(0, 2, 3, 1), np.asarray(ys)


# ---------------------------------------------------------------------------------------------
# The real copy


def real_data_root() -> Path | None:
    """$CIFARLAB_TEST_DATA, else <repo>/data when it holds train/ and test/ (or the python batches)."""
    env = os.environ.get("CIFARLAB_TEST_DATA")
    if env:
        return Path(env) if Path(env).is_dir() else None
    local = REPO / "data"
    if ((local / "train").is_dir() and (local / "test").is_dir()) or (local / "cifar-10-batches-py").is_dir():
        return local
    return None


@pytest.fixture(scope="session")
def real_data() -> Path:
    root = real_data_root()
    if root is None:
        pytest.skip("real CIFAR-10 not found: set $CIFARLAB_TEST_DATA or unpack it into <repo>/data")
    return root


@pytest.fixture(scope="session")
def real_cifar(real_data):
    """The decoded real copy (from its cache after the first run), loaded once per session."""
    from cifarlab.data import load_cifar10

    return load_cifar10(real_data)


# ---------------------------------------------------------------------------------------------
# Running the CLI


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()


@pytest.fixture
def cli(capsys) -> Callable[..., CliResult]:
    """Run `cifarlab ARGS...` in-process; argparse's own exits count as exit codes too."""
    from cifarlab.cli import main

    def run(*argv: str | os.PathLike) -> CliResult:
        capsys.readouterr()  # drop anything printed before
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def run_console(*argv: str | os.PathLike, cwd: Path | None = None, timeout: float = 120) -> CliResult:
    """Run `python -m cifarlab ARGS...` in a fresh interpreter, as a user would."""
    env = {**os.environ, "CIFARLAB_NO_PROGRESS": "1"}
    env.pop("CIFARLAB_DATA", None)
    proc = subprocess.run([sys.executable, "-m", "cifarlab", *map(str, argv)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)
