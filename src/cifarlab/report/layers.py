"""Each model's layer table (parameters, shapes, receptive field), as report blocks.

The table comes from the run folder's `layers.json`, written when the run trained. Only a registry
model (cifarlab's own code) of a run that predates it is rebuilt; a model file named in a study
folder is never imported: opening a folder must not run its code.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cifarlab.errors import CifarlabError
from cifarlab.report.doc import Block, Bullets, Column, Para, Table

LAYERS = "layers.json"  # experiment.LAYERS; not imported from there, which loads torch


def layer_table_blocks(run_dir: Path, config: dict[str, Any]) -> list[Block]:
    """The run's layer table and totals; a one-line note when it cannot be shown."""
    from cifarlab.analysis import LayerTable, layer_table
    from cifarlab.analysis.formats import display
    from cifarlab.models import create_model, is_external

    model_cfg = config.get("model") if isinstance(config.get("model"), dict) else {}
    path = Path(run_dir) / LAYERS
    try:
        if path.is_file():
            try:
                table = LayerTable.from_dict(json.loads(path.read_text()))
            except (OSError, ValueError) as exc:  # unreadable or not JSON: damaged, like any other file
                raise CifarlabError(f"{path.name} is unreadable ({exc.__class__.__name__})") from None
        elif is_external(str(model_cfg.get("name", ""))):
            raise CifarlabError(f"{path.name} was not recorded, and a report does not run a study's model files")
        else:  # a registry model of a run from before layers.json: our own code, safe to rebuild
            model = create_model(str(model_cfg.get("name")), **model_cfg.get("options", {}))
            table = layer_table(model, input_shape=(3, 32, 32))
    except CifarlabError as exc:  # a model no longer registered, a layer the analysis has no rule for
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        return [Para(f"Layer table unavailable ({exc.__class__.__name__}: {first_line}).", "note")]
    columns, rows, notes = display(table)
    return [Table([Column(*c) for c in columns], rows), Bullets(notes)]
