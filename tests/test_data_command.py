"""`cifarlab data`: reports what it found, or one line and exit 2."""
from __future__ import annotations

import numpy as np
from PIL import Image

from cifarlab.cli import main
from cifarlab.data import CLASSES


def test_data_command_summarises_a_folder(tmp_path, capsys):
    rng = np.random.default_rng(1)
    for split, n in (("train", 3), ("test", 2)):
        for c in CLASSES:
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / split / c / f"{i}.png")
    assert main(["data", "--data", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "train 30 images, test 20" in out and "per class train 3-3, test 2-2" in out
    assert (tmp_path / ".cifarlab-cache.npz").is_file()


def test_data_command_missing_folder(tmp_path, capsys):
    assert main(["data", "--data", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]
