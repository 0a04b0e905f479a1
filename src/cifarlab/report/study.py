"""Reading a study folder for the report: the store's meta and runs, grouped by experiment, plus
the per-run test-set predictions. Nothing here writes to the study folder.

A study folder may come from elsewhere and may be damaged: a run that cannot be read is left out
with a note (`Study.notes`), unreadable predictions make that run's figures "unavailable", and only
damage that leaves nothing to report on is an error. Nothing read here is unpickled or executed.
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cifarlab.errors import CifarlabError
from cifarlab.store import STORE_NAME, RunRecord, Store, StoreError, record_problem


class ReportError(CifarlabError):
    """The folder cannot be reported on (no store, no runs)."""


@dataclass
class Experiment:
    """One experiment of a study: its runs (one per seed, ordered by seed) and its spec facts."""

    name: str
    description: str
    runs: list[RunRecord]

    def values(self, key: str) -> list[float]:
        """A per-run quantity: a RunRecord field, or 'gap' (train - test accuracy)."""
        if key == "gap":
            return [r.train_acc - r.test_acc for r in self.runs]
        return [float(getattr(r, key)) for r in self.runs if getattr(r, key) is not None]

    def median_run(self) -> RunRecord:
        """The run with the median final test accuracy (the lower one of the middle two when n is even)."""
        ordered = sorted(self.runs, key=lambda r: (r.test_acc, r.seed))
        return ordered[(len(ordered) - 1) // 2]


@dataclass
class Study:
    """Everything the report shows, read once from the folder."""

    folder: Path
    name: str
    experiments: list[Experiment]
    baseline: str | None
    spec: str
    budget: dict[str, Any]
    val: int
    recorded: dt.datetime  # last change to the store file
    missing: list[str] = field(default_factory=list)  # experiments in the spec without a finished run
    notes: list[str] = field(default_factory=list)  # damaged runs or facts that were left out
    single_run: bool = False  # a run folder read as a study of one experiment with one seed (load_run)

    @property
    def runs(self) -> list[RunRecord]:
        return [r for e in self.experiments for r in e.runs]

    def experiment(self, name: str) -> Experiment | None:
        return next((e for e in self.experiments if e.name == name), None)


def load_study(folder: str | Path, url: str | None = None) -> Study:
    """Read `folder/store.sqlite` (or, with `url`, the shared study named in `folder/study.json`);
    ReportError when there is no store or no finished run."""
    folder = Path(folder)
    path = folder / STORE_NAME
    if not folder.is_dir():
        raise ReportError(f"'{folder}' is not a folder")
    notes: list[str] = []
    if url is not None:
        from cifarlab.store_pg import read_shared

        meta, runs, recorded = read_shared(folder, url)
    elif not path.is_file():
        raise ReportError(f"'{folder}' holds no study store ({STORE_NAME}), nor a run (config.json and "
                          "history.json), nor a sweep (sweep.json): nothing to report on")
    elif path.stat().st_size == 0:
        # Store() would initialise an empty file as a new store; a report must never write.
        raise StoreError(f"'{path}' is empty, not a cifarlab study store (left untouched)")
    else:
        recorded = dt.datetime.fromtimestamp(path.stat().st_mtime)
        with Store(folder, create=False) as store:
            meta = _checked_meta(store.meta(notes), notes)
            runs = store.runs(notes)
    if not runs:
        why = f": {notes[0]}" if notes else " yet"
        raise ReportError(f"the study in '{folder}' has no {'readable' if notes else 'finished'} runs{why}")

    order = list(meta.get("experiments") or [])
    by_name: dict[str, list[RunRecord]] = {}
    for run in runs:
        by_name.setdefault(run.experiment, []).append(run)
    names = [n for n in order if n in by_name] + sorted(n for n in by_name if n not in order)
    descriptions = meta.get("descriptions") or {}
    experiments = [Experiment(n, str(descriptions.get(n, "")), sorted(by_name[n], key=lambda r: r.seed))
                   for n in names]
    baseline = meta.get("baseline")
    return Study(
        folder=folder,
        name=str(meta.get("name") or folder.resolve().name),
        experiments=experiments,
        baseline=baseline if baseline in by_name else None,
        spec=str(meta.get("spec") or ""),
        budget=dict(meta.get("budget") or {}),
        val=int(meta.get("val") or 0),
        recorded=recorded,
        missing=[n for n in order if n not in by_name],
        notes=notes,
    )


def is_run_folder(folder: str | Path) -> bool:
    """Whether `folder` holds what every run folder holds (config.json, history.json) and no study store."""
    folder = Path(folder)
    return (folder / "config.json").is_file() and (folder / "history.json").is_file() and \
        not (folder / STORE_NAME).exists()


def load_run(folder: str | Path) -> Study:
    """Read a run folder (`cifarlab train`, or one run of a study) as a study of one experiment with one seed,
    so the study report's sections show it; ReportError (one line) when config.json or history.json is
    unreadable or not what a run writes. An interrupted run (`.incomplete`) is read as far as it got."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ReportError(f"'{folder}' is not a folder")
    docs = {}
    for name in ("config.json", "history.json"):
        try:
            docs[name] = json.loads((folder / name).read_text())
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ReportError(f"'{folder / name}' is unreadable ({exc.__class__.__name__}); nothing to report on") \
                from None
        if not isinstance(docs[name], dict):
            raise ReportError(f"'{folder / name}' is not what a run writes (a JSON table)")
    config, history = docs["config.json"], docs["history.json"]
    meta = history.get("meta") if isinstance(history.get("meta"), dict) else {}
    rows = history.get("epochs")
    if not all(isinstance(config.get(k), dict) for k in ("data", "model", "train")):
        raise ReportError(f"'{folder}' is not a run folder cifarlab can report on: its config is not a table of "
                          "tables")
    train, model = config["train"], config["model"]
    rows_seconds = sum(r["train_seconds"] for r in rows if isinstance(r, dict) and isinstance(r.get("train_seconds"), float)) \
        if isinstance(rows, list) else 0.0
    record = {"experiment": folder.resolve().name, "seed": train.get("seed"), "run_dir": ".",
              "model": model.get("name"), "params": meta.get("params"), "epochs": len(rows or []),
              # An interrupted run has no run totals yet: its epochs' own figures stand in.
              "seconds": meta.get("train_seconds", rows_seconds), "warmup_seconds": meta.get("warmup_seconds", 0.0),
              "device": meta.get("device", "not recorded"), "config": config, "history": rows}
    problem = record_problem(record)
    if problem:
        raise ReportError(f"'{folder}' is not a run folder cifarlab can report on: {problem}")
    notes = []
    if folder.name.endswith(".incomplete"):
        notes.append(f"an interrupted run: {len(rows)} of {train.get('epochs', '?')} epochs finished, and "
                     "there are no final weights or test predictions yet")
    if meta.get("stopped"):
        notes.append(f"the run was stopped early on purpose ({meta['stopped']})")
    path = folder / "history.json"
    return Study(folder=folder, name=record["experiment"], experiments=[Experiment(record["experiment"], "",
                 [RunRecord(**record)])], baseline=None, spec="", budget={},
                 val=val if isinstance(val := config["data"].get("val"), int) else 0,
                 recorded=dt.datetime.fromtimestamp(path.stat().st_mtime), notes=notes, single_run=True)


# What each study fact must be; a fact of another type is ignored with a note.
_META_TYPES: dict[str, Any] = {"name": str, "experiments": list, "descriptions": dict, "baseline": str, "spec": str,
                               "budget": dict, "val": int}


def _checked_meta(meta: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    out = {}
    for key, value in meta.items():
        kind = _META_TYPES.get(key)
        if kind is None or value is None:
            out[key] = value
            continue
        ok = isinstance(value, kind) and not isinstance(value, bool)
        if kind is list:
            ok = ok and all(isinstance(v, str) for v in value)
        if kind is dict and key == "descriptions":
            ok = ok and all(isinstance(v, str) for v in value.values())
        if kind is dict and key == "budget":
            ok = ok and all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in value.values())
        if ok:
            out[key] = value
        else:
            notes.append(f"study fact '{key}' is damaged ({type(value).__name__}) and was ignored")
    return out


@dataclass(frozen=True)
class Predictions:
    """Test-set softmax outputs of one run: probs (N, 10) float32, labels (N,) int64."""

    probs: np.ndarray
    labels: np.ndarray

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(1)


CLASSES = 10  # CIFAR-10: every run predicts 10 classes


def load_predictions(study: Study, run: RunRecord) -> Predictions | None:
    """`<run_dir>/predictions.npz`, or None when it is missing, unreadable or not what a run writes."""
    path = study.folder / run.run_dir / "predictions.npz"
    try:
        if study.folder.resolve() not in path.resolve().parents:  # a damaged run_dir points elsewhere
            return None
        with np.load(path, allow_pickle=False) as z:
            probs = np.asarray(z["probs"], dtype=np.float32)
            raw_labels = np.asarray(z["labels"])
    except Exception:  # noqa: BLE001 - any unreadable file (truncated zip, bad CRC, zlib error, ...)
        return None
    if probs.ndim != 2 or probs.shape[1] != CLASSES or raw_labels.shape != (probs.shape[0],) or len(probs) == 0:
        return None
    if raw_labels.dtype.kind not in "iu" or not np.isfinite(probs).all():
        return None
    labels = raw_labels.astype(np.int64)
    if labels.min() < 0 or labels.max() >= CLASSES:
        return None
    return Predictions(probs, labels)


def confusion(preds: list[Predictions], classes: int) -> np.ndarray:
    """Confusion counts (true class rows, predicted class columns), summed over runs."""
    out = np.zeros((classes, classes), dtype=np.int64)
    for p in preds:
        np.add.at(out, (p.labels, p.predicted), 1)
    return out
