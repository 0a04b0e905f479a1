"""`format_table(table, fmt)`: the layer table as aligned text, Markdown, CSV or JSON.

`display(table)` gives the cells the text and Markdown formats (and the study report) show, as data.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import fields
from typing import NamedTuple

from cifarlab.analysis.geometry import fmt_pair
from cifarlab.analysis.table import LayerRow, LayerTable
from cifarlab.errors import ConfigError

FORMATS = ("table", "markdown", "csv", "json")

# (header, alignment: l text, r numbers) in display order; N = map size, J = jump, R = receptive field,
# in input pixels.
COLUMNS = (("layer", "l"), ("type", "l"), ("k", "r"), ("s", "r"), ("p", "r"), ("d", "r"),
           ("N_in", "r"), ("N_out", "r"), ("J_in", "r"), ("J_out", "r"), ("R_in", "r"), ("R_out", "r"),
           ("output", "l"), ("params", "r"), ("MACs", "r"))


class Display(NamedTuple):
    """The table as text cells: one list per row in COLUMNS order, and the totals as sentences."""

    columns: tuple[tuple[str, str], ...]  # (header, alignment)
    rows: list[list[str]]
    notes: list[str]


def format_table(table: LayerTable, fmt: str) -> str:
    """The table as 'table' (aligned text), 'markdown', 'csv' or 'json'; text ends without a newline."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format '{fmt}' (choose from {', '.join(FORMATS)})")
    return {"table": _text, "markdown": _markdown, "csv": _csv, "json": _json}[fmt](table)


def display(t: LayerTable) -> Display:
    """The cells and totals that the text and Markdown formats lay out."""
    return Display(COLUMNS, [_cells(r) for r in t.rows], _totals(t))


def _cells(r: LayerRow) -> list[str]:
    if r.n_out is None:  # no spatial map any more (after flatten), or not a map at all
        geometry = ["-"] * 6
    else:  # the input row and merges have no single input map
        geometry = list(map(fmt_pair, (r.n_in, r.n_out, r.j_in, r.j_out, r.r_in, r.r_out)))
    return [r.label, r.type, *map(fmt_pair, (r.kernel, r.stride, r.padding, r.dilation)),
            *geometry, "x".join(map(str, r.out_shape)), f"{r.params:,}", f"{r.macs:,}"]


def _totals(t: LayerTable) -> list[str]:
    mib = t.activation_bytes_per_image / 2**20
    return [f"input {'x'.join(map(str, t.input_shape))}: {t.trainable_params:,} trainable + "
            f"{t.non_trainable_params:,} non-trainable parameters",
            f"MACs per image: {t.macs:,} ({t.macs / 1e6:.2f} M; convolutions and linear layers only)",
            f"activations per image: {mib:.2f} MiB (float32 outputs of every layer, views and in-place excluded)"]


def _text(t: LayerTable) -> str:
    d = display(t)
    grid = [[h for h, _ in d.columns]] + d.rows
    widths = [max(len(row[i]) for row in grid) for i in range(len(d.columns))]
    lines = ["  ".join(c.rjust(w) if a == "r" else c.ljust(w) for c, w, (_, a) in zip(row, widths, d.columns))
             .rstrip() for row in grid]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + [""] + d.notes)


def _markdown(t: LayerTable) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    d = display(t)
    lines = [line([h for h, _ in d.columns]), "|" + "|".join("---:" if a == "r" else "---" for _, a in d.columns) + "|"]
    lines += [line(row) for row in d.rows]
    return "\n".join(lines + [""] + [f"- {s}" for s in d.notes])


def _csv(t: LayerTable) -> str:
    # One line per row with every LayerRow field; pairs as '3' or '1x3'. Totals: use json.
    names = [f.name for f in fields(LayerRow)]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(names)
    for r in t.rows:
        w.writerow([_csv_value(getattr(r, n)) for n in names])
    return buf.getvalue().rstrip("\n")


def _csv_value(v: object) -> object:
    if v is None:
        return ""
    if isinstance(v, tuple):
        return fmt_pair(v) if len(v) == 2 and v[0] == v[1] else "x".join(f"{x:g}" for x in v)
    return v


def _json(t: LayerTable) -> str:
    # One row per line: indent=2 would put every number of every (h, w) pair on a line of its own.
    d = t.to_dict()
    rows = ",\n".join(f"    {json.dumps(r)}" for r in d.pop("rows"))
    head, *totals = (f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in d.items())
    return "{\n" + ",\n".join([head, f'  "rows": [\n{rows}\n  ]', *totals]) + "\n}"
