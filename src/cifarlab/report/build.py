"""Assemble the report from a study folder and write report.html and report.md (+ report-files/)."""
from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import numpy as np

from cifarlab.errors import CifarlabError
from cifarlab.mistakes import MAX_MISTAKES, top_mistakes
from cifarlab.report import figures
from cifarlab.report.doc import (Block, Bullets, Column, Details, Document, Heading, Image, Para, Pre, Table,
                                 render_html, render_markdown)
from cifarlab.report.gradcam import cam_caption, mistakes_cam_grid, run_cams
from cifarlab.report.insights import insights, reference
from cifarlab.report.layers import layer_table_blocks
from cifarlab.report.stats import summarize
from cifarlab.report.study import (Experiment, Predictions, ReportError, Study, confusion, is_run_folder,
                                   load_predictions, load_run, load_study)
from cifarlab.report.text import (config_diff, config_summary, duration, int_range, interval, mean_std, pct,
                                  unique_slugs)
from cifarlab.store import RunRecord

HTML_NAME, MD_NAME, FILES_DIR = "report.html", "report.md", "report-files"
BEST_EPOCH_LABEL = "best test epoch (optimistic, for reference only)"


# ---------------------------------------------------------------------------------------------
# Sections


def _facts(study: Study) -> list[tuple[str, str]]:
    runs = study.runs
    devices = sorted({r.device for r in runs})
    seeds = sorted({r.seed for r in runs})
    wall = sum(r.seconds + r.warmup_seconds for r in runs)
    facts = [("experiments", str(len(study.experiments))),
             ("runs", f"{len(runs)} (seeds {', '.join(map(str, seeds))})"),
             ("device", ", ".join(devices)),
             ("total wall-clock", duration(wall)),
             ("last run recorded", study.recorded.strftime("%Y-%m-%d %H:%M")),
             ("report written", dt.datetime.now().strftime("%Y-%m-%d %H:%M"))]
    budget = []
    if study.budget.get("max_params"):
        budget.append(f"\u2264 {int(study.budget['max_params']):,} params")
    if study.budget.get("max_epochs"):
        budget.append(f"\u2264 {int(study.budget['max_epochs'])} epochs")
    if budget:
        facts.append(("budget", ", ".join(budget)))
    return facts


def _baseline_mark(exp: Experiment, study: Study) -> str:
    return " (baseline)" if exp.name == study.baseline and exp.name.lower() != "baseline" else ""


T = TypeVar("T")


def _table(spec: list[tuple[Column, Callable[[T], str]]], items: Sequence[T], **kw: Any) -> Table:
    """One row per item; each column brings the function of its cell, so header and cells stay together."""
    return Table([column for column, _ in spec], [[cell(x) for _, cell in spec] for x in items], **kw)


def comparison_table(study: Study) -> Table:
    ref = reference(study)
    ref_mean = summarize(ref.values("test_acc")).mean
    has_val = study.val > 0 and any(r.val_acc is not None for r in study.runs)
    has_tta = any(r.test_acc_tta is not None for r in study.runs)
    has_tta6 = any(r.test_acc_tta6 is not None for r in study.runs)

    def acc(metric: str) -> Callable[[Experiment], str]:
        return lambda e: mean_std(e.values(metric))

    def delta(e: Experiment) -> str:
        return "\u2013" if e is ref else f"{100 * (summarize(e.values('test_acc')).mean - ref_mean):+.2f}"

    spec = [(Column("experiment", "l"), lambda e: f"**{e.name}**" + _baseline_mark(e, study)),
            (Column("n"), lambda e: str(len(e.runs))),
            (Column("test acc %"), acc("test_acc")),
            (Column("95% CI"), lambda e: interval(e.values("test_acc"))),
            (Column("\u0394 test (pts)"), delta),
            (Column("train acc %"), acc("train_acc")),
            (Column("gap (pts)"), acc("gap"))]
    spec += [(Column(name), acc(metric)) for name, metric, shown in (
        ("val acc %", "val_acc", has_val), ("flip TTA %", "test_acc_tta", has_tta),
        ("6-view TTA %", "test_acc_tta6", has_tta6)) if shown]
    spec += [(Column("params"), lambda e: int_range(e.values("params"))),
             (Column("epochs"), lambda e: int_range(e.values("epochs"))),
             (Column("s / run"), lambda e: mean_std(e.values("seconds"), scale=1.0, digits=1))]
    caption = ("Final-epoch accuracy, mean \u00b1 std over n seeds (sample std); 95% CI: t-interval of the mean. "
               f"\u0394 test: points against {ref.name}. Gap = train \u2212 test accuracy in points (train accuracy "
               "is measured on the augmented training batches during the last epoch). s / run: training "
               "wall-clock, warm-up excluded. No epoch or checkpoint is selected on the test set.")
    if has_val:
        caption += f" Val: {study.val:,} held-out training images, final epoch."
    if has_tta:
        caption += " Flip TTA: test accuracy averaging the predictions of each image and its mirror image."
    if has_tta6:
        caption += (" 6-view TTA: the same over flip \u00d7 {unshifted, 1 pixel down-right, 1 pixel up-left}, "
                    "final epoch.")
    return _table(spec, study.experiments, caption=caption, row_notes=[e.description for e in study.experiments])


def per_seed_table(exp: Experiment, study: Study) -> Table:
    has_val = study.val > 0 and any(r.val_acc is not None for r in exp.runs)
    has_tta = any(r.test_acc_tta is not None for r in exp.runs)

    def optional(metric: str) -> Callable[[RunRecord], str]:
        return lambda r: "\u2013" if getattr(r, metric) is None else pct(getattr(r, metric))

    def best_epoch(r: RunRecord) -> str:
        scored = [row for row in r.history if isinstance(row.get("test_acc"), (int, float))]
        best = max(scored, key=lambda row: row["test_acc"]) if scored else None
        return f"{pct(best['test_acc'])} (epoch {best['epoch']})" if best else "\u2013"

    spec = [(Column("seed"), lambda r: str(r.seed)), (Column("test acc %"), lambda r: pct(r.test_acc)),
            (Column("train acc %"), lambda r: pct(r.train_acc)),
            (Column("gap (pts)"), lambda r: pct(r.train_acc - r.test_acc))]
    spec += [(Column("val acc %"), optional("val_acc"))] * has_val
    spec += [(Column("flip TTA %"), optional("test_acc_tta"))] * has_tta
    spec += [(Column(BEST_EPOCH_LABEL), best_epoch), (Column("seconds"), lambda r: f"{r.seconds:.1f}"),
             (Column("run folder", "l"), lambda r: f"`{r.run_dir}`")]
    return _table(spec, exp.runs)


def _class_names(preds: dict[str, list[Predictions]], images: "_Images") -> list[str]:
    """Class names from the dataset when it can be loaded, else CIFAR-10's (numbers for another class count)."""
    from cifarlab.data import CLASSES

    images.get()  # sets images.classes when the dataset loads
    k = max((p.probs.shape[1] for ps in preds.values() for p in ps), default=len(CLASSES))
    names = list(images.classes or CLASSES)
    return names if len(names) == k else [str(i) for i in range(k)]


def per_class_blocks(study: Study, preds: dict[str, list[Predictions]], classes: list[str]) -> list[Block]:
    """The per-class accuracy section; none when no experiment has readable predictions."""
    shown = [e for e in study.experiments if preds.get(e.name)]
    if not shown:
        return []
    rows = []
    for e in shown:
        m = confusion(preds[e.name], len(classes))
        acc = np.diag(m) / np.maximum(m.sum(1), 1)
        rows.append([f"**{e.name}**"] + [f"{100 * a:.1f}" for a in acc])
    return [Heading(2, "Per-class accuracy", "per-class"),
            Table([Column("experiment", "l")] + [Column(c) for c in classes], rows,
                  caption="Final-epoch test accuracy per class (%), pooled over each experiment's seeds.")]


class _Images:
    """Test images for the error grids, loaded once; None when they cannot be found.

    Only from the data the user points to (--data, $CIFARLAB_DATA, ./data), never from the data
    root a run recorded: a study folder from elsewhere must not choose which files get unpickled.
    """

    def __init__(self, root: str | None) -> None:
        self.root = root
        self.loaded: tuple[np.ndarray | None, np.ndarray | None, str] | None = None
        self.classes: tuple[str, ...] | None = None

    def get(self) -> tuple[np.ndarray | None, np.ndarray | None, str]:
        if self.loaded is None:
            try:
                from cifarlab.data import load_cifar10

                ds = load_cifar10(self.root)
                self.loaded = (ds.test_x, ds.test_y, "")
                self.classes = ds.classes
            except (CifarlabError, OSError, ValueError) as exc:
                self.loaded = (None, None, str(exc))
        return self.loaded


@dataclass(frozen=True)
class MistakeGrid:
    """How many of the most confident mistakes a report shows, and how many per row."""

    count: int = MAX_MISTAKES
    cols: int = 8  # images per row of the plain grid
    cam_cols: int = 4  # per row with Grad-CAM: each mistake is three tiles (image, predicted, true)


def mistakes_block(exp: Experiment, tag: str, study: Study, images: _Images, classes: list[str],
                   grid: MistakeGrid = MistakeGrid()) -> list[Block]:
    """The most confident mistakes of the experiment's median seed, laid out as `grid` says."""
    run = exp.median_run()
    which = "the median seed" if len(exp.runs) > 1 else "the only seed"
    pred = load_predictions(study, run)
    if pred is None:
        return [Para(f"Misclassified images: unavailable (`{run.run_dir}/predictions.npz` is missing or unreadable).",
                     "note")]
    test_x, test_y, why = images.get()
    if test_x is None:
        return [Para(f"Misclassified images: unavailable, the test images could not be loaded ({why}). "
                     "Pass `--data DIR` to point at CIFAR-10.", "note")]
    if len(test_x) != len(pred.labels) or not np.array_equal(np.asarray(test_y), pred.labels):
        return [Para(f"Misclassified images: unavailable, the test images found ({len(test_x):,}) do not match "
                     f"the run's predictions ({len(pred.labels):,}).", "note")]
    predicted = pred.predicted
    wrong = np.flatnonzero(predicted != pred.labels)
    if len(wrong) == 0:
        return [Para(f"Seed {run.seed} classifies every test image correctly.", "note")]
    pick = top_mistakes(pred.probs, pred.labels, MAX_MISTAKES)  # the mistakes cams.npz holds maps of
    cams = run_cams(study.folder / run.run_dir, study.folder, pick, predicted, pred.labels)
    pick = pick[:grid.count]
    shown = ([classes[i] for i in pred.labels[pick]], [classes[i] for i in predicted[pick]],
             pred.probs[pick, predicted[pick]].tolist())
    png = (figures.mistakes_grid(test_x[pick], *shown, cols=grid.cols) if cams is None
           else mistakes_cam_grid(test_x[pick], *shown, cams.maps[:len(pick)], per_row=grid.cam_cols))
    caption = (f"The {len(pick)} most confident mistakes (of {len(wrong):,}) of seed {run.seed}, {which} "
               f"(final test accuracy {pct(run.test_acc)}%). Above each image: true class, \u2192 predicted "
               "class and its softmax probability." + (cam_caption(cams) if cams is not None else ""))
    return [Image(f"{tag}-mistakes", png, f"misclassified test images, {exp.name}", caption)]


def experiment_section(exp: Experiment, tag: str, study: Study, preds: list[Predictions], images: _Images,
                       classes: list[str], layers: dict[str, list[Block]],
                       grid: MistakeGrid = MistakeGrid()) -> list[Block]:
    """Description, config, per-seed table, curves, confusion matrix, mistakes and layer table of one experiment."""
    ref = reference(study)
    blocks: list[Block] = [Heading(3, exp.name + _baseline_mark(exp, study), f"exp-{tag}")]
    if exp.description:
        blocks.append(Para(exp.description))
    blocks.append(Para(f"Config: {config_summary(exp.runs[0].config)}.", "note"))
    if exp is not ref:
        diff = config_diff(exp, ref)
        blocks.append(Para(f"Differs from {ref.name}: " + ("; ".join(diff) if diff else "nothing but the name")
                           + ".", "note"))
    blocks.append(per_seed_table(exp, study))
    blocks.append(Image(f"{tag}-curves", figures.experiment_curves(exp, study.val > 0),
                        f"training curves, {exp.name}",
                        f"Loss and accuracy per epoch, mean over {len(exp.runs)} seed(s)"
                        + (", shaded band = min..max over seeds." if len(exp.runs) > 1 else ".")))
    if preds:
        pooled = confusion(preds, len(classes))
        title = f"{exp.name}: confusion matrix, {len(preds)} seed(s) pooled"
        blocks.append(Image(f"{tag}-confusion", figures.confusion_matrix(pooled, classes, title),
                            f"confusion matrix, {exp.name}",
                            "Row-normalised: each row shows where the test images of one true class went (%); "
                            "the row label gives that class's accuracy."))
    else:
        blocks.append(Para("Confusion matrix: unavailable (no readable predictions.npz).", "note"))
    blocks += mistakes_block(exp, tag, study, images, classes, grid)
    key = json.dumps(exp.runs[0].config.get("model", {}), sort_keys=True)
    if key not in layers:
        layers[key] = layer_table_blocks(study.folder / exp.runs[0].run_dir, exp.runs[0].config)
    blocks.append(Details(f"Layer table of `{exp.runs[0].model}` (parameters, shapes, receptive field)",
                          layers[key]))
    return blocks


def build_report(study: Study, data_root: str | None = None) -> Document:
    """The whole report as a Document: comparison and insights first, then curves, then each experiment."""
    images = _Images(data_root)
    preds = {e.name: [p for p in (load_predictions(study, r) for r in e.runs) if p is not None]
             for e in study.experiments}
    classes = _class_names(preds, images)

    blocks: list[Block] = [Heading(2, "Comparison", "comparison"), comparison_table(study), *_warnings(study)]
    blocks += [Heading(2, "Insights", "insights"), Bullets(insights(study))]
    blocks += [Heading(2, "Training curves", "curves"),
               Image("overlay-curves", figures.overlay_curves(study.experiments), "training curves, all experiments",
                     "All experiments: mean over seeds; test solid with a min..max band, train dashed.")]
    blocks += per_class_blocks(study, preds, classes)
    blocks.append(Heading(2, "Experiments", "experiments"))
    layers: dict[str, list[Block]] = {}  # model config (JSON) -> its layer table, built once per model
    tags = unique_slugs([e.name for e in study.experiments], reserved=("overlay",))
    for exp in study.experiments:
        blocks += experiment_section(exp, tags[exp.name], study, preds[exp.name], images, classes, layers)
    if study.spec.strip():
        blocks += [Heading(2, "Study spec", "spec"), Pre(study.spec)]
    return Document(study.name, _facts(study), blocks)


def _warnings(study: Study) -> list[Block]:
    """Experiments without runs, damaged or interrupted runs, diverged runs: callouts under the first table."""
    blocks = []
    if study.missing:
        blocks.append(Para(f"Not in the table (no finished run yet): {', '.join(study.missing)}.", "warn"))
    if study.notes:
        label = "Note" if study.single_run else "Left out, damaged in the study folder"
        blocks.append(Para(f"{label}: {'; '.join(study.notes)}.", "warn"))
    diverged = sorted({f"{r.experiment} seed {r.seed}" for r in study.runs if r.diverged})
    if diverged:
        blocks.append(Para(f"Diverged (non-finite loss): {', '.join(diverged)}.", "warn"))
    return blocks


# A single run's report shows its 10 most confident mistakes, 5 per row (the seed assignment's 5x2 grid).
RUN_MISTAKES = MistakeGrid(count=10, cols=5, cam_cols=5)
MAX_SOURCE_BYTES = 200_000  # a model file longer than this is shown cut, with a note
SOURCE_COPY = "model_source.py"  # experiment.SOURCE_COPY; not imported from there, which loads torch


def build_run_report(study: Study, data_root: str | None = None) -> Document:
    """A run folder's report (a study of one run, report.study.load_run): the study report's experiment
    section (result, curves, confusion matrix, mistakes, layer table), per-class accuracy, the full
    config and the model's source when it came from a file."""
    exp = study.experiments[0]
    run = exp.runs[0]
    images = _Images(data_root)
    preds = [p for p in (load_predictions(study, run),) if p is not None]
    classes = _class_names({exp.name: preds}, images)
    blocks: list[Block] = [Heading(2, "Run", "run"), *_warnings(study),
                           *experiment_section(exp, "run", study, preds, images, classes, {}, grid=RUN_MISTAKES)]
    blocks += per_class_blocks(study, {exp.name: preds}, classes)
    blocks += [Heading(2, "Config", "config"),
               Pre(json.dumps(run.config, indent=2), "config.json: every setting of the run, as `cifarlab train` "
                                                     "resolved it")]
    blocks += _source_blocks(study.folder, run.config)
    return Document(study.name, _run_facts(study), blocks)


def _source_blocks(folder: Path, config: dict[str, Any]) -> list[Block]:
    """The model file the run trained (its copy, model_source.py), shown as text: never imported."""
    path = folder / SOURCE_COPY
    source = (config.get("model") or {}).get("source") or {}
    if not path.exists():
        return [Para("The model came from a file or module; its copy (model_source.py) is missing from the run "
                     "folder.", "note")] if source else []
    try:
        data = path.read_bytes()
    except OSError as exc:
        return [Para(f"Model source: unavailable (model_source.py is unreadable: {exc.strerror}).", "note")]
    cut = len(data) > MAX_SOURCE_BYTES
    text = data[:MAX_SOURCE_BYTES].decode("utf-8", errors="replace")
    where = f"`{source.get('path') or source.get('module') or '?'}`" + (f", object `{source['object']}`"
                                                                       if source.get("object") else "")
    sha = source.get("sha256")
    caption = (f"model_source.py: the copy of {where} this run trained"
               + (f" (sha256 {str(sha)[:12]}...)" if sha else "") + ", shown as text (a report never runs it)"
               + (f"; the first {MAX_SOURCE_BYTES:,} of {len(data):,} bytes" if cut else "") + ".")
    return [Heading(2, "Model source", "source"), Pre(text, caption)]


def _run_facts(study: Study) -> list[tuple[str, str]]:
    run = study.runs[0]
    facts = [("run folder", f"`{study.folder}`"), ("model", f"`{run.model}`"), ("seed", str(run.seed)),
             ("epochs", f"{len(run.history)} of {run.config.get('train', {}).get('epochs', '?')}"),
             ("device", run.device), ("training wall-clock", duration(run.seconds + run.warmup_seconds)),
             ("last epoch recorded", study.recorded.strftime("%Y-%m-%d %H:%M")),
             ("report written", dt.datetime.now().strftime("%Y-%m-%d %H:%M"))]
    if isinstance(run.config.get("max_params"), int):
        facts.append(("budget", f"\u2264 {run.config['max_params']:,} params"))
    return facts


# ---------------------------------------------------------------------------------------------
# Writing


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_report(folder: str | Path, data_root: str | None = None, url: str | None = None) -> tuple[Path, Path]:
    """Write `folder/report.html` (self-contained) and `folder/report.md` (+ `report-files/*.png`) for a
    study folder, or for a run folder (config.json and history.json, no store); `url`: the study's runs
    are in that database (cifarlab study --storage)."""
    folder = Path(folder)
    if url is None and is_run_folder(folder):
        return write_document(build_run_report(load_run(folder), data_root), folder)
    return write_document(build_report(load_study(folder, url), data_root), folder)


def write_document(doc: Document, folder: Path) -> tuple[Path, Path]:
    """Render `doc` into `folder/report.html` and `folder/report.md` (+ `report-files/*.png`)."""
    html_path, md_path, files_dir = folder / HTML_NAME, folder / MD_NAME, folder / FILES_DIR
    markdown, files = render_markdown(doc, FILES_DIR)
    if files_dir.is_symlink() or (files_dir.exists() and not files_dir.is_dir()):  # its PNGs get replaced
        raise ReportError(f"'{files_dir}' is not the folder of figures cifarlab writes (left untouched)")
    files_dir.mkdir(exist_ok=True)
    for stale in files_dir.glob("*.png"):  # figures of experiments no longer in the study
        if stale.name not in files:
            stale.unlink()
    for name, png in files.items():
        _write_atomic(files_dir / name, png)
    _write_atomic(md_path, markdown.encode("utf-8"))
    _write_atomic(html_path, render_html(doc).encode("utf-8"))
    return html_path, md_path
