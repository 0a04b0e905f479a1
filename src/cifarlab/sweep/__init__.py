"""Hyper-parameter sweeps on Optuna: a study spec plus a [search] space -> trials judged on validation accuracy.

`spec` parses and checks the spec (no Optuna needed); `storage` and `run` need Optuna
(`pip install 'cifarlab[sweep]'`) and are imported on use.
"""
from cifarlab.sweep.spec import SweepSpec, load_sweep_spec

__all__ = ["SweepSpec", "load_sweep_spec"]
