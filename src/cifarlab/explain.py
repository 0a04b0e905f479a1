"""What a run leaves for explaining it later: Grad-CAM maps of its top mistakes, its lr range test.

Written by experiment.run_experiment into the run folder while the model is at hand, so that a report
(which never imports model code from a study folder) can draw them from plain arrays.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from torch import nn

from cifarlab.analysis import LayerTable
from cifarlab.cam import mistake_cams
from cifarlab.data import DataSplits
from cifarlab.mistakes import CAMS_FILE, save_cams
from cifarlab.train import History


def save_explanations(folder: Path, model: nn.Module, data: DataSplits, history: History, layers: str | None,
                      log: Callable[[str], None] | None) -> None:
    """cams.npz: Grad-CAM of the top test mistakes, from the model at hand (a report never runs model code);
    lr_find.csv/png when the lr was "auto"."""
    if history.lr_find is not None:
        from cifarlab.lrfind import write_outputs

        write_outputs(folder, history.lr_find,
                      f"range test before training (lr auto -> {history.lr_find.suggestion:.3g})")
    try:
        table = LayerTable.from_dict(json.loads(layers)) if layers else None
        if history.test_logits is None:
            return
        cams = mistake_cams(model, data.test.x, history.test_logits, data.test.y, table)
    except Exception as exc:  # noqa: BLE001 - an extra for the report: it must not cost the finished run
        if log is not None:
            log(f"warning: no Grad-CAM maps of the mistakes ({exc.__class__.__name__}: "
                f"{(str(exc).splitlines() or [''])[0][:160]}); the report shows the plain grid")
        return
    if cams is not None:
        save_cams(folder / CAMS_FILE, cams)
