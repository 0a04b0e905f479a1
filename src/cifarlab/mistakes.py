"""The most confident mistakes of a run, and their Grad-CAM maps as stored data (`cams.npz`).

Numpy only: the trainer writes `cams.npz` when a run ends (cam.py computes the maps, the model at
hand), and the reports read it back as plain arrays (`np.load(allow_pickle=False)`), so that drawing
the overlays never imports or runs model code from a study folder.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAX_MISTAKES = 24  # images in a report's most-confident-mistakes grid
CAMS_FILE = "cams.npz"
CAM_SIZE = 32  # stored maps are upsampled to the image size: 24 x 2 x 32 x 32 float16 = 96 KiB before zip


def top_mistakes(probs: np.ndarray, labels: np.ndarray, k: int = MAX_MISTAKES) -> np.ndarray:
    """Indices of the `k` misclassified images with the highest predicted-class probability, highest first.

    Callers pass the probabilities as predictions.npz stores them (float16), so that the trainer and the
    report rank ties the same way.
    """
    probs = np.asarray(probs, dtype=np.float32)
    predicted = probs.argmax(1)
    wrong = np.flatnonzero(predicted != labels)
    conf = probs[wrong, predicted[wrong]]
    return wrong[np.argsort(-conf, kind="stable")[:k]]


@dataclass(frozen=True)
class Cams:
    """Grad-CAM of a run's top mistakes: maps[i, 0] for the predicted class, maps[i, 1] for the true one."""

    indices: np.ndarray  # (K,) test-set indices, as top_mistakes ranks them
    predicted: np.ndarray  # (K,) class indices
    labels: np.ndarray  # (K,) true class indices
    maps: np.ndarray  # (K, 2, CAM_SIZE, CAM_SIZE) float32 in [0, 1], each scaled to its own maximum
    peaks: np.ndarray  # (K, 2) each map's maximum before scaling (0: no positive evidence at all)
    layer: str  # the module the maps were taken at ('C5.0')
    map_size: tuple[int, int]  # the layer's map (h, w) before upsampling


def save_cams(path: str | os.PathLike, cams: Cams) -> None:
    """Write `cams` as plain arrays (float16 maps), atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, indices=cams.indices.astype(np.int32), predicted=cams.predicted.astype(np.int8),
                        labels=cams.labels.astype(np.int8), maps=cams.maps.astype(np.float16),
                        peaks=cams.peaks.astype(np.float32), layer=np.array(cams.layer),
                        map_size=np.array(cams.map_size, dtype=np.int32))
    tmp.replace(path)


def load_cams(path: str | os.PathLike) -> Cams | None:
    """The stored maps, or None when the file is missing, unreadable or not what a run writes."""
    try:
        with np.load(path, allow_pickle=False) as z:
            a = {k: np.asarray(z[k]) for k in ("indices", "predicted", "labels", "maps", "peaks", "layer", "map_size")}
    except Exception:  # noqa: BLE001 - missing, truncated zip, bad CRC, a key missing, ...
        return None
    k = len(a["indices"])
    shapes_ok = (a["indices"].shape == a["predicted"].shape == a["labels"].shape == (k,)
                 and a["maps"].shape == (k, 2, CAM_SIZE, CAM_SIZE) and a["peaks"].shape == (k, 2)
                 and a["layer"].shape == () and a["layer"].dtype.kind == "U" and a["map_size"].shape == (2,))
    if not shapes_ok or any(a[n].dtype.kind not in "iu" for n in ("indices", "predicted", "labels", "map_size")):
        return None
    maps = a["maps"].astype(np.float32)
    if not (np.isfinite(maps).all() and maps.min(initial=0) >= 0 and maps.max(initial=0) <= 1):
        return None
    return Cams(a["indices"].astype(np.int64), a["predicted"].astype(np.int64), a["labels"].astype(np.int64), maps,
                a["peaks"].astype(np.float32), str(a["layer"]), (int(a["map_size"][0]), int(a["map_size"][1])))
