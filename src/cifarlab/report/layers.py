"""Each model's layer table (parameters, shapes, receptive field) from `cifarlab.analysis`, as report blocks.

The analysis package is imported lazily: when it is missing or fails on a model, the report shows a
one-line note instead of the table.
"""
from __future__ import annotations

import re
from typing import Any

from cifarlab.report.doc import Block, Bullets, Para, Table


def layer_table_blocks(config: dict[str, Any]) -> list[Block]:
    """The model's layer table from cifarlab.analysis, or a one-line note when it cannot be built."""
    model_cfg = config.get("model", {})
    try:
        from cifarlab.analysis import format_table, layer_table
        from cifarlab.config import ModelConfig, from_dict
        from cifarlab.models import model_from_config

        model = model_from_config(from_dict(ModelConfig, model_cfg))  # a file model: the recorded file
        text = format_table(layer_table(model, input_shape=(3, 32, 32)), "markdown")
    except Exception as exc:  # noqa: BLE001 - a missing or failing analysis must not sink the report
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        return [Para(f"Layer table unavailable ({exc.__class__.__name__}: {first_line}).", "note")]
    return markdown_blocks(text)


def markdown_blocks(text: str) -> list[Block]:
    """Pipe tables become Tables, "- " lines bullet lists, other lines paragraphs (for `format_table` output)."""
    blocks: list[Block] = []
    lines = text.strip("\n").splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("|"):
            group = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                group.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            rule = len(group) > 1 and all(re.fullmatch(r":?-{2,}:?", c) for c in group[1])
            header, body = (group[0], group[2:]) if rule else (group[0], group[1:])
            align = "".join("r" if rule and group[1][j].endswith(":") and not group[1][j].startswith(":")
                            else "l" for j in range(len(header)))
            blocks.append(Table(header, [r + [""] * (len(header) - len(r)) for r in body], align=align))
            continue
        if line.startswith(("- ", "* ")):
            items = []
            while i < len(lines) and lines[i].strip().startswith(("- ", "* ")):
                items.append(lines[i].strip()[2:])
                i += 1
            blocks.append(Bullets(items))
            continue
        if line:
            blocks.append(Para(line))
        i += 1
    return blocks
