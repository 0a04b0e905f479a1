"""Receptive-field arithmetic, one value per spatial axis as an (h, w) pair.

A feature map is described by its size n, its jump j (input pixels between neighbouring units),
the receptive field r of one unit (input pixels) and `start`, the centre of the first unit's field
in input coordinates (pixel 0 is the first input pixel; padding makes it negative). A sliding window
with kernel k, stride s, leading padding p and dilation d maps them to

    k_eff = d*(k-1) + 1      j' = j*s      r' = r + (k_eff-1)*j      start' = start + ((k_eff-1)/2 - p)*j

(Dumoulin & Visin 2016; Araujo, Norris & Sim, Distill 2019). n' is read off the real output, so
ceil_mode and uneven padding need no formula of their own.
"""
from __future__ import annotations

from dataclasses import dataclass

Pair = tuple[int, int]


class GeometryError(Exception):
    """A layer whose effect on the receptive field has no rule here; the caller names the layer."""


@dataclass(frozen=True)
class Geom:
    """Size, jump, receptive field and first-unit centre of a spatial map, each as (h, w)."""

    n: Pair
    j: Pair
    r: Pair
    start: tuple[float, float]

    @classmethod
    def input(cls, n: Pair) -> Geom:
        return cls(n, (1, 1), (1, 1), (0.0, 0.0))


class _Flat:
    """Marks a tensor computed from the input that has lost its (C, H, W) layout (flatten, permute, ...)."""

    def __repr__(self) -> str:
        return "FLAT"


FLAT = _Flat()


@dataclass(frozen=True)
class Window:
    """A sliding window: kernel, stride, leading (top, left) padding and dilation, each (h, w)."""

    kernel: Pair
    stride: Pair
    padding: Pair
    dilation: Pair = (1, 1)


def pair(value) -> Pair:
    """3 -> (3, 3); (1, 3) -> (1, 3)."""
    if isinstance(value, int):
        return (value, value)
    h, w = value
    return (int(h), int(w))


def slide(g: Geom, w: Window, n_out: Pair) -> Geom:
    """The map after window `w` slides over `g`."""
    j, r, start = zip(*(_slide_axis(g.j[a], g.r[a], g.start[a], w.kernel[a], w.stride[a], w.padding[a], w.dilation[a])
                        for a in (0, 1)))
    return Geom(n_out, j, r, start)


def _slide_axis(j: int, r: int, start: float, k: int, s: int, p: int, d: int) -> tuple[int, int, float]:
    k_eff = d * (k - 1) + 1
    return j * s, r + (k_eff - 1) * j, start + ((k_eff - 1) / 2 - p) * j


def adaptive_window(n_in: Pair, n_out: Pair) -> Window:
    """The fixed window an adaptive pool uses from n_in to n_out; global pooling is kernel = stride = n_in."""
    for a, b in zip(n_in, n_out):
        # Adaptive windows span floor(i*a/b) .. ceil((i+1)*a/b): equal and non-overlapping only when b divides a.
        if a % b:
            raise GeometryError(f"adaptive pooling from {a} to {b} uses uneven windows, so the field varies by unit")
    kernel = (n_in[0] // n_out[0], n_in[1] // n_out[1])
    return Window(kernel, kernel, (0, 0))


def merge(branches: list[Geom], n_out: Pair) -> Geom:
    """The map after adding, multiplying or concatenating aligned branches (same size and jump)."""
    for g in branches:
        if g.n != n_out:
            raise GeometryError(f"a branch of size {fmt_pair(g.n)} is broadcast to {fmt_pair(n_out)}, "
                                "so the receptive field is not the same for every unit")
    jumps = {g.j for g in branches}
    if len(jumps) > 1:
        listed = ", ".join(fmt_pair(j) for j in sorted(jumps))
        raise GeometryError(f"the merged branches have different jumps ({listed})")
    # Each unit sees the union of its branches' fields. With centred branches (the usual case) this is the
    # largest branch field; off-centre branches (e.g. uneven padding) widen it further.
    lo = [min(g.start[axis] - (g.r[axis] - 1) / 2 for g in branches) for axis in (0, 1)]
    hi = [max(g.start[axis] + (g.r[axis] - 1) / 2 for g in branches) for axis in (0, 1)]
    r = (round(hi[0] - lo[0]) + 1, round(hi[1] - lo[1]) + 1)
    start = ((lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2)
    return Geom(n_out, branches[0].j, r, start)


def fmt_pair(p: Pair | None) -> str:
    """(3, 3) -> '3', (1, 3) -> '1x3', None -> ''."""
    if p is None:
        return ""
    return str(p[0]) if p[0] == p[1] else f"{p[0]}x{p[1]}"
