"""The report's figures as PNG bytes (matplotlib, Agg backend, 100 dpi)."""
from __future__ import annotations

import io
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # no display needed; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from cifarlab.report.study import Experiment  # noqa: E402

DPI = 100
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
          "#7f7f7f", "#bcbd22")
STYLE = {
    "font.size": 9.5, "axes.titlesize": 10.5, "axes.labelsize": 9.5, "legend.fontsize": 8.5,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
    "grid.linewidth": 0.6, "figure.facecolor": "white", "axes.facecolor": "white",
}


def canvas_figure(canvas: np.ndarray) -> tuple[Figure, "plt.Axes"]:
    """A figure that shows `canvas` (H, W, 3) pixel for pixel, for labels drawn on top in pixel units."""
    height, width = canvas.shape[:2]
    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(canvas, interpolation="nearest")
    ax.set_axis_off()
    return fig, ax


def to_png(fig: Figure) -> bytes:
    """Render and close a figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def curve_stats(exp: Experiment, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Per epoch over seeds: epochs, mean, min, max of history column `key` (non-finite values ignored)."""
    epochs = sorted({row["epoch"] for r in exp.runs for row in r.history if key in row})
    if not epochs:
        return None
    index = {e: i for i, e in enumerate(epochs)}
    table = np.full((len(exp.runs), len(epochs)), np.nan)
    for i, run in enumerate(exp.runs):
        for row in run.history:
            value = row.get(key)
            if value is not None and np.isfinite(value):
                table[i, index[row["epoch"]]] = value
    ok = ~np.isnan(table).all(0)
    if not ok.any():
        return None
    table = table[:, ok]
    return (np.asarray(epochs)[ok], np.nanmean(table, 0), np.nanmin(table, 0), np.nanmax(table, 0))


def _band(ax, exp: Experiment, key: str, color: str, label: str, scale: float = 1.0, dashed: bool = False,
          band: bool = True) -> None:
    stats = curve_stats(exp, key)
    if stats is None:
        return
    x, mean, lo, hi = stats
    ax.plot(x, mean * scale, color=color, lw=1.6, ls="--" if dashed else "-", label=label,
            marker="o" if len(x) <= 3 else None, ms=3)
    if band and len(exp.runs) > 1:
        ax.fill_between(x, lo * scale, hi * scale, color=color, alpha=0.15, lw=0)


def _epoch_axis(ax) -> None:
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)


def experiment_curves(exp: Experiment, show_val: bool) -> bytes:
    """Loss and accuracy per epoch for one experiment: mean over seeds, band = min..max."""
    series = [("train", "#1f77b4", False), ("test", "#d62728", False)] + [("val", "#2ca02c", True)] * show_val
    with plt.rc_context(STYLE):
        fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.4), layout="constrained")
        for part, color, dashed in series:
            _band(ax_loss, exp, f"{part}_loss", color, part, dashed=dashed)
            _band(ax_acc, exp, f"{part}_acc", color, part, scale=100, dashed=dashed)
        ax_loss.set_title("loss")
        ax_acc.set_title("accuracy (%)")
        for ax in (ax_loss, ax_acc):
            _epoch_axis(ax)
            if ax.get_legend_handles_labels()[0]:  # nothing finite to plot (a run that diverged at once)
                ax.legend(frameon=False, loc="best")
        n = len(exp.runs)
        fig.suptitle(f"{exp.name}: mean over {n} seed{'s' if n != 1 else ''}"
                     + (", band = min..max" if n > 1 else ""), fontsize=10.5, x=0.01, ha="left")
        return to_png(fig)


def overlay_curves(experiments: Sequence[Experiment]) -> bytes:
    """Every experiment on one pair of axes: test (solid, min..max band) and train (dashed)."""
    with plt.rc_context(STYLE):
        fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
        for i, exp in enumerate(experiments):
            color = COLORS[i % len(COLORS)]
            _band(ax_loss, exp, "test_loss", color, exp.name)
            _band(ax_loss, exp, "train_loss", color, None, dashed=True, band=False)
            _band(ax_acc, exp, "test_acc", color, exp.name, scale=100)
            _band(ax_acc, exp, "train_acc", color, None, scale=100, dashed=True, band=False)
        ax_loss.set_title("loss (solid: test, dashed: train)")
        ax_acc.set_title("accuracy % (solid: test, dashed: train)")
        for ax in (ax_loss, ax_acc):
            _epoch_axis(ax)
        handles, labels = ax_acc.get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside right upper", frameon=False)
        return to_png(fig)


def confusion_matrix(counts: np.ndarray, classes: Sequence[str], title: str) -> bytes:
    """Row-normalised confusion matrix (% of each true class), per-class accuracy in the row labels."""
    totals = counts.sum(1, keepdims=True)
    pct = np.divide(counts * 100.0, totals, out=np.zeros(counts.shape), where=totals > 0)
    k = len(classes)
    with plt.rc_context({**STYLE, "axes.grid": False}):
        fig, ax = plt.subplots(figsize=(6.0, 5.2), layout="constrained")
        im = ax.imshow(pct, cmap="Blues", vmin=0, vmax=100)
        for i in range(k):
            for j in range(k):
                if counts[i, j]:
                    ax.text(j, i, f"{pct[i, j]:.0f}", ha="center", va="center", fontsize=7.5,
                            color="white" if pct[i, j] > 55 else "#222")
        ax.set_xticks(range(k), classes, rotation=45, ha="right")
        ax.set_yticks(range(k), [f"{c}  {pct[i, i]:.0f}%" for i, c in enumerate(classes)])
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class  (per-class accuracy)")
        ax.set_title(title, loc="left")
        fig.colorbar(im, ax=ax, shrink=0.8, label="% of the true class")
        return to_png(fig)


def mistakes_grid(images: np.ndarray, true: Sequence[str], pred: Sequence[str], conf: Sequence[float],
                  cols: int = 8, scale: int = 3) -> bytes:
    """Test images (N, 32, 32, 3) uint8 with their true class, predicted class and confidence.

    The images are tiled into one canvas drawn on a single axes: 24 separate axes take seconds to lay out.
    """
    n = len(images)
    cols = max(1, min(cols, n))
    rows = max(1, -(-n // cols))
    size, pad, label = 32 * scale, 14, 34  # pixels: image side, gap between cells, label band above
    cell_w, cell_h = size + pad, size + label + pad // 2
    canvas = np.full((rows * cell_h, cols * cell_w, 3), 255, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        y, x = r * cell_h + label, c * cell_w + pad // 2
        canvas[y:y + size, x:x + size] = images[i].repeat(scale, 0).repeat(scale, 1)
    fig, ax = canvas_figure(canvas)
    for i in range(n):
        r, c = divmod(i, cols)
        x, y = c * cell_w + cell_w / 2, r * cell_h + label - 4
        ax.text(x, y - 13, true[i], ha="center", va="bottom", fontsize=8, color="#222")
        ax.text(x, y, f"\u2192 {pred[i]} {conf[i] * 100:.0f}%", ha="center", va="bottom", fontsize=8,
                color="#b22222")
    return to_png(fig)
