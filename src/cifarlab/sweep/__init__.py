"""Hyper-parameter sweeps on Optuna: a study spec plus a [search] space -> trials judged on validation accuracy.

`spec` parses and checks the spec (no Optuna needed); `storage` and `run` need Optuna
(`pip install 'cifarlab[sweep]'`) and are imported on use.
"""
from pathlib import Path

from cifarlab.sweep.spec import SweepSpec, load_sweep_spec

INFO_NAME = "sweep.json"  # marks a sweep folder: name, spec digest, where the search is stored
JOURNAL_NAME = "sweep.journal"  # the default storage: Optuna's journal file


def require_optuna() -> None:
    """One line and exit 2 when the optional extra is missing; the rest of cifarlab never imports Optuna."""
    from cifarlab.errors import CifarlabError

    try:
        import optuna  # noqa: F401
    except ImportError:
        raise CifarlabError("sweeps need Optuna: pip install 'cifarlab[sweep]'") from None


def is_sweep_folder(folder: str | Path) -> bool:
    """Whether `folder` was made by `cifarlab sweep` (rather than `cifarlab study`)."""
    return (Path(folder) / INFO_NAME).is_file() or (Path(folder) / JOURNAL_NAME).is_file()


__all__ = ["INFO_NAME", "JOURNAL_NAME", "SweepSpec", "is_sweep_folder", "load_sweep_spec", "require_optuna"]
