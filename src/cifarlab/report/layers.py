"""Each model's layer table (parameters, shapes, receptive field) from `cifarlab.analysis`, as report blocks."""
from __future__ import annotations

from typing import Any

from cifarlab.errors import CifarlabError
from cifarlab.report.doc import Block, Bullets, Column, Para, Table


def layer_table_blocks(config: dict[str, Any]) -> list[Block]:
    """The model's layer table and totals; a one-line note when the model cannot be built or analysed."""
    # Imported here: they load torch, which only a report that shows layer tables needs.
    from cifarlab.analysis import layer_table
    from cifarlab.analysis.formats import display
    from cifarlab.config import ModelConfig, from_dict
    from cifarlab.models import model_from_config

    try:  # a model no longer registered, a changed model file, a layer the analysis has no rule for
        model = model_from_config(from_dict(ModelConfig, config.get("model", {})))  # a file model: the recorded file
        table = layer_table(model, input_shape=(3, 32, 32))
    except CifarlabError as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        return [Para(f"Layer table unavailable ({exc.__class__.__name__}: {first_line}).", "note")]
    columns, rows, notes = display(table)
    return [Table([Column(*c) for c in columns], rows), Bullets(notes)]
