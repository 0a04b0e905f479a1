"""Grad-CAM overlays as PNG bytes: the report's mistakes grid with maps, and one figure per image for
`cifarlab predict --cam`. Drawn from plain arrays (images uint8, maps in [0, 1]); no torch here."""
from __future__ import annotations

from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cifarlab.report.figures import STYLE, canvas_figure, to_png  # noqa: E402

CMAP = "jet"  # the colour scale of Grad-CAM figures in the paper and most tutorials: blue low, red high


def overlay(images: np.ndarray, maps: np.ndarray, scale: int = 1) -> np.ndarray:
    """Heat maps over images: (N, H, W, 3) uint8 and (N, H, W) in [0, 1] -> (N, H*scale, W*scale, 3) uint8.

    Pixels are enlarged as blocks (nearest), the way the net saw them. The heat colour's weight grows with
    the map (at most 0.6), so the image stays visible where the map is low.
    """
    img = images.astype(np.float32).repeat(scale, 1).repeat(scale, 2)
    m = np.clip(maps, 0, 1).astype(np.float32).repeat(scale, 1).repeat(scale, 2)
    heat = matplotlib.colormaps[CMAP](m)[..., :3] * 255.0
    alpha = 0.6 * m[..., None]
    return ((1 - alpha) * img + alpha * heat).round().clip(0, 255).astype(np.uint8)


def mistakes_cam_grid(images: np.ndarray, true: Sequence[str], pred: Sequence[str], conf: Sequence[float],
                      maps: np.ndarray, per_row: int = 4, scale: int = 3) -> bytes:
    """Per mistake three tiles: the image, Grad-CAM for the predicted class, Grad-CAM for the true class.

    `maps` (N, 2, 32, 32) in [0, 1]: [:, 0] predicted, [:, 1] true. One canvas on one axes, as
    figures.mistakes_grid does (24 axes take seconds to lay out).
    """
    n = len(images)
    per_row = max(1, min(per_row, n))
    rows = max(1, -(-n // per_row))
    size, gap, group_gap, label = 32 * scale, 4, 22, 44  # pixels
    group_w = 3 * size + 2 * gap
    cell_w, cell_h = group_w + group_gap, size + label + 8
    canvas = np.full((rows * cell_h, per_row * cell_w, 3), 255, dtype=np.uint8)
    tiles = [images.repeat(scale, 1).repeat(scale, 2), overlay(images, maps[:, 0], scale),
             overlay(images, maps[:, 1], scale)]
    for i in range(n):
        r, c = divmod(i, per_row)
        y, x = r * cell_h + label, c * cell_w + group_gap // 2
        for t, tile in enumerate(tiles):
            canvas[y:y + size, x + t * (size + gap): x + t * (size + gap) + size] = tile[i]
    fig, ax = canvas_figure(canvas)
    for i in range(n):
        r, c = divmod(i, per_row)
        x0, y = c * cell_w + group_gap // 2, r * cell_h + label - 3
        ax.text(x0 + group_w / 2, y - 16, f"{true[i]} \u2192 {pred[i]} {conf[i] * 100:.0f}%", ha="center",
                va="bottom", fontsize=8, color="#222")
        for t, text, color in ((1, f"CAM {pred[i]}", "#b22222"), (2, f"CAM {true[i]}", "#1a6e1a")):
            ax.text(x0 + t * (size + gap) + size / 2, y, text, ha="center", va="bottom", fontsize=7, color=color)
    return to_png(fig)


def cam_figure(image: np.ndarray, cam: np.ndarray, title: str, subtitle: str = "") -> bytes:
    """One image (H, W, 3) uint8 as the net saw it, and with its Grad-CAM map (H, W) in [0, 1] over it."""
    scale = 8
    with plt.rc_context({**STYLE, "axes.grid": False}):
        fig, axes = plt.subplots(1, 2, figsize=(5.6, 3.2), layout="constrained")
        axes[0].imshow(image.repeat(scale, 0).repeat(scale, 1), interpolation="nearest")
        axes[0].set_title("input (32x32)", fontsize=9)
        axes[1].imshow(overlay(image[None], cam[None], scale)[0], interpolation="nearest")
        axes[1].set_title("Grad-CAM", fontsize=9)
        for ax in axes:
            ax.set_axis_off()
        fig.suptitle(title, fontsize=10.5)
        if subtitle:
            fig.supxlabel(subtitle, fontsize=7.5, color="#555")  # laid out below the images, not over them
        return to_png(fig)


def run_cams(run_dir, study_folder, pick: np.ndarray, predicted: np.ndarray, labels: np.ndarray):
    """The run's stored Grad-CAM maps (mistakes.Cams) when they are for exactly these mistakes, else None.

    None for a run from before cams.npz, a damaged file, or maps of other images (a file copied from
    another run): the grid is then drawn without maps. `run_dir` must lie inside `study_folder`.
    """
    from pathlib import Path

    from cifarlab.mistakes import CAMS_FILE, load_cams

    path = Path(run_dir) / CAMS_FILE
    try:
        if Path(study_folder).resolve() not in path.resolve().parents:
            return None
    except OSError:
        return None
    cams = load_cams(path)
    if cams is None or not (np.array_equal(cams.indices, pick) and np.array_equal(cams.predicted, predicted[pick])
                            and np.array_equal(cams.labels, labels[pick])):
        return None
    return cams


def cam_caption(cams) -> str:
    """What the maps in the grid are, for its caption."""
    h, w = cams.map_size
    return (f" Beside each image, Grad-CAM at layer `{cams.layer}` ({h}x{w} map, upsampled): red marks where the "
            "evidence for the predicted class (middle) and for the true class (right) lies; each map is scaled to "
            "its own maximum; an image left uncoloured has no positive evidence for that class at all. Computed when the run "
            "trained, from its final weights, on the unflipped image.")
