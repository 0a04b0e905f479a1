"""Reading a sweep: its storage, its best trial and the winner's config, for the report and bench/tuned.py.

Nothing here trains (the report never imports the trainer); `run` holds the workers.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from cifarlab.config import RunConfig, SweepOptions
from cifarlab.console import plural
from cifarlab.errors import ConfigError
from cifarlab.sweep import INFO_NAME, JOURNAL_NAME
from cifarlab.sweep.spec import SweepSpec
from cifarlab.sweep.storage import open_storage

TRIALS_DIR = "trials"
FINAL_DIR = "final"  # the winner's final-seed runs: a study folder (store.sqlite) of its own
DIGEST_ATTR = "spec_digest"


def trial_dir(number: int) -> str:
    return f"{TRIALS_DIR}/trial-{number:04d}"


def short(values: dict[str, Any]) -> str:
    """'lr=0.1, batch_size=64': parameter values by the last part of their path."""
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={format(v, '.4g') if isinstance(v, float) else v}"
                     for k, v in values.items())


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise ConfigError(f"sweep '{study.study_name}' has no completed trial yet")
    return max(complete, key=lambda t: (t.value, -t.number))


def winner_config(spec: SweepSpec, trial: optuna.trial.FrozenTrial) -> RunConfig:
    """The best trial's config with the validation images put back (data.val = 0)."""
    cfg = spec.config(trial.params)
    return replace(cfg, data=replace(cfg.data, val=0))


def stored_spec(study: optuna.Study) -> SweepSpec:
    """The spec a search was started from, as stored with it (for readers without the spec file)."""
    from cifarlab.sweep.spec import parse_sweep_spec

    text = study.user_attrs.get("spec")
    if text is None:
        raise ConfigError(f"sweep '{study.study_name}' was not started by cifarlab sweep (no stored spec)")
    return replace(parse_sweep_spec(text, Path(f"<spec of sweep {study.study_name}>")), name=study.study_name)


def open_existing(folder: Path, url: str | None) -> optuna.Study:
    """The search a sweep folder (or a URL) holds, for reading: the report, bench/tuned.py."""
    info_path = Path(folder) / INFO_NAME  # sweep.json: absent when `folder` is not a sweep folder
    # No file, or one that holds null, is no info.
    info = (json.loads(info_path.read_text()) if info_path.is_file() else None) or {}
    if url is None and info.get("storage"):
        raise ConfigError(f"sweep '{info.get('name')}' is stored in {info['storage']}: pass --storage URL")
    if url is None and not (folder / JOURNAL_NAME).is_file():
        raise ConfigError(f"'{folder}' holds no sweep (no {JOURNAL_NAME}); run `cifarlab sweep` first")
    storage = open_storage(folder, url, SweepOptions())
    names = [s.study_name for s in optuna.get_all_study_summaries(storage.optuna, include_best_trial=False)]
    name = info.get("name")
    if name is None:
        if len(names) != 1:
            raise ConfigError(f"{storage.where} holds {plural(len(names), 'sweep')} ({', '.join(names)}) and "
                              f"'{folder}' has no sweep.json naming one")
        name = names[0]
    if name not in names:
        raise ConfigError(f"{storage.where} holds no sweep named '{name}'")
    return optuna.load_study(study_name=name, storage=storage.optuna)

