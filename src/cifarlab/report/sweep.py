"""The sweep report: what the search tried and found, read from its Optuna storage and its folder.

Best trials, optimisation history, per-epoch validation curves (pruned trials dashed), parameter
importances (Optuna's fANOVA), a slice plot per parameter, failed trials with their reasons, and the
winner's final-seed runs (folder/final, a study folder) with the study report's own sections: curves,
confusion matrix and mistakes. Rendered by report.doc like the study report. Needs Optuna.
"""
from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path

import matplotlib.pyplot as plt
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from cifarlab.report import figures
from cifarlab.report.build import build_report, write_document
from cifarlab.report.doc import Block, Column, Document, Heading, Image, Para, Pre, Table
from cifarlab.report.study import load_study
from cifarlab.report.text import duration
from cifarlab.store import STORE_NAME
from cifarlab.sweep.results import FINAL_DIR, open_existing

TOP = 10  # rows of the best-trials table
# Sections of the final runs' study report left out here: with one experiment there is nothing to compare,
# its curves section repeats the experiment's own, and the spec is the sweep's, shown once at the end.
FINAL_SKIP = ("insights", "curves", "spec")


def _value_text(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _last(t: FrozenTrial) -> tuple[int, float] | None:
    return max(t.intermediate_values.items()) if t.intermediate_values else None


def best_table(trials: list[FrozenTrial], names: list[str]) -> Table:
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: (-t.value, t.number))
    rows = []
    for rank, t in enumerate(complete[:TOP], start=1):
        epochs = _last(t)
        rows.append([str(rank), f"**{t.number}**", f"{100 * t.value:.2f}"]
                    + [_value_text(t.params[n]) if n in t.params else "\u2013" for n in names]
                    + [str(epochs[0]) if epochs else "\u2013", f"{t.user_attrs.get('seconds', float('nan')):.1f}",
                       f"`{t.user_attrs.get('run_dir', '')}`"])
    columns = [Column("#"), Column("trial"), Column("val acc %")]
    columns += [Column(n, "r" if all(isinstance(t.params.get(n), (int, float)) for t in complete) else "l")
                for n in names]
    columns += [Column("epochs"), Column("seconds"), Column("run folder", "l")]
    return Table(columns, rows,
                 caption=f"The {min(TOP, len(complete))} best of {len(complete)} completed trials by final-epoch "
                         "validation accuracy (one seed each, so differences of a point or two may be noise). "
                         "Seconds: training wall-clock.")


def failed_table(trials: list[FrozenTrial]) -> Table | None:
    failed = [t for t in trials if t.state == TrialState.FAIL]
    if not failed:
        return None
    return Table([Column("trial"), Column("reason", "w")],
                 [[str(t.number), t.user_attrs.get("fail_reason", "(no reason recorded)")] for t in failed],
                 caption="Failed trials: an invalid point of the space, or a worker that died (its parameters "
                         "were queued again as a new trial).")


def history_figure(trials: list[FrozenTrial]) -> bytes:
    """Validation accuracy per trial number: completed dots, pruned crosses at their last epoch, best so far."""
    done = sorted((t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)), key=lambda t: t.number)
    with plt.rc_context(figures.STYLE):
        fig, ax = plt.subplots(figsize=(8, 3.4), layout="constrained")
        complete = [t for t in done if t.state == TrialState.COMPLETE]
        pruned = [(t.number, _last(t)[1]) for t in done if t.state == TrialState.PRUNED and _last(t)]
        ax.scatter([t.number for t in complete], [100 * t.value for t in complete], s=22, color=figures.COLORS[0],
                   label="completed (final epoch)", zorder=3)
        if pruned:
            ax.scatter([n for n, _ in pruned], [100 * v for _, v in pruned], s=26, marker="x",
                       color=figures.COLORS[1], label="pruned (last epoch trained)", zorder=3)
        xs = [t.number for t in complete]
        ys = [100 * best for best in itertools.accumulate((t.value for t in complete), max)]
        if xs:
            last = max(t.number for t in done)
            ax.step(xs + [last], ys + ys[-1:], where="post", color="#444", lw=1.2, label="best so far")
        ax.set_xlabel("trial")
        ax.set_ylabel("validation accuracy (%)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(frameon=False, loc="best")
        return figures.to_png(fig)


def curves_figure(trials: list[FrozenTrial]) -> bytes:
    """Per-epoch validation accuracy of every trial, as Optuna saw it: what the pruner compared."""
    with plt.rc_context(figures.STYLE):
        fig, ax = plt.subplots(figsize=(8, 3.4), layout="constrained")
        for t in sorted(trials, key=lambda t: t.number):
            if not t.intermediate_values:
                continue
            steps = sorted(t.intermediate_values)
            ys = [100 * t.intermediate_values[s] for s in steps]
            if t.state == TrialState.PRUNED:
                ax.plot(steps, ys, color=figures.COLORS[1], lw=0.9, ls="--", alpha=0.7, marker="x", ms=4)
            else:
                ax.plot(steps, ys, color=figures.COLORS[0], lw=1.1, alpha=0.8, marker="o", ms=2.5)
        ax.plot([], [], color=figures.COLORS[0], label="completed")
        ax.plot([], [], color=figures.COLORS[1], ls="--", label="pruned")
        ax.set_ylabel("validation accuracy (%)")
        figures._epoch_axis(ax)
        ax.legend(frameon=False, loc="lower right")
        return figures.to_png(fig)


def importances(study: optuna.Study) -> tuple[dict[str, float] | None, str]:
    """Optuna's PED-ANOVA importances of the parameters for the objective, or None and why not.

    PED-ANOVA rather than Optuna's default fANOVA: it needs no scikit-learn and is meant for the few
    dozen trials a budget sweep has.
    """
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return None, f"needs at least 2 completed trials ({len(complete)} so far)"
    try:
        return optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.PedAnovaImportanceEvaluator()), ""
    except (ValueError, RuntimeError) as exc:  # e.g. every completed trial has the same parameters
        return None, str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__


def importance_figure(values: dict[str, float]) -> bytes:
    names = list(values)[::-1]
    with plt.rc_context(figures.STYLE):
        fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.0), layout="constrained")
        ax.barh(names, [values[n] for n in names], color=figures.COLORS[0])
        ax.set_xlabel("importance (PED-ANOVA, normalised to sum to 1)")
        ax.grid(axis="y", visible=False)
        return figures.to_png(fig)


def slice_figure(trials: list[FrozenTrial], names: list[str]) -> bytes:
    """One panel per parameter: final validation accuracy of each completed trial against its value."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    with plt.rc_context(figures.STYLE):
        fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), layout="constrained", squeeze=False)
        for ax, name in zip(axes.flat, names):
            points = [(t.params[name], 100 * t.value, t.number) for t in complete if name in t.params]
            dist = next((t.distributions[name] for t in complete if name in t.distributions), None)
            if isinstance(dist, CategoricalDistribution):
                labels = [_value_text(c) for c in dist.choices]
                xs = [labels.index(_value_text(p)) for p, _, _ in points]
                ax.set_xticks(range(len(labels)), labels)
                ax.set_xlim(-0.5, len(labels) - 0.5)
            else:
                xs = [p for p, _, _ in points]
                if isinstance(dist, (FloatDistribution, IntDistribution)) and dist.log:
                    ax.set_xscale("log")
            sc = ax.scatter(xs, [v for _, v, _ in points], c=[n for _, _, n in points], cmap="viridis", s=20)
            ax.set_title(name, fontsize=9.5)
        for ax in axes.flat[len(names):]:
            ax.set_visible(False)
        for ax in axes[:, 0]:
            ax.set_ylabel("val acc (%)")
        if complete:
            fig.colorbar(sc, ax=axes, shrink=0.8, label="trial")
        return figures.to_png(fig)


def final_blocks(folder: Path, data_root: str | None) -> list[Block]:
    """The winner's final-seed runs, as the study report shows a study: table, curves, confusion, mistakes."""
    final = folder / FINAL_DIR
    if not (final / STORE_NAME).is_file():
        return [Heading(2, "Final seeds", "final"),
                Para("No final-seed runs yet: `cifarlab sweep SPEC --final-seeds N` retrains the best trial on all "
                     "training images with N fresh seeds and measures its test accuracy, the only time a sweep "
                     "reads the test set.", "note")]
    study = load_study(final)
    winner = f"trial-{study_meta_winner(final)}"
    study.experiments = [e for e in study.experiments if e.name == winner] or study.experiments[-1:]
    blocks: list[Block] = [Heading(2, "Final seeds", "final"),
                           Para(f"The best trial's configuration with the validation images put back, trained with "
                                f"fresh seeds; these are the only runs of the sweep that read the test set. Their "
                                f"runs are a study folder of their own: `{final}`.", "note")]
    section = ""
    for block in build_report(study, data_root).blocks:
        if isinstance(block, Heading) and block.level == 2:
            section = block.anchor
        if section in FINAL_SKIP:
            continue
        if isinstance(block, Heading):  # one level down; a section's anchor made distinct from the sweep's own
            block = Heading(block.level + 1, block.text, f"final-{block.anchor}" if block.level == 2 else block.anchor)
        blocks.append(block)
    return blocks


def study_meta_winner(final: Path) -> int | None:
    from cifarlab.store import Store

    with Store(final, create=False) as store:
        return store.meta().get("winner")


def build_sweep_report(folder: Path, url: str | None = None, data_root: str | None = None) -> Document:
    """The sweep report as a Document."""
    study = open_existing(folder, url)
    trials = study.get_trials(deepcopy=False)
    states = {s: [t for t in trials if t.state == s] for s in TrialState}
    names = list(dict.fromkeys(n for t in trials for n in t.distributions))
    finished = len(states[TrialState.COMPLETE]) + len(states[TrialState.PRUNED])
    facts = [("trials", str(len(trials))),
             ("complete", str(len(states[TrialState.COMPLETE]))),
             ("pruned", f"{len(states[TrialState.PRUNED])}"
                        + (f" ({100 * len(states[TrialState.PRUNED]) / finished:.0f}% of finished)" if finished else "")),
             ("failed", str(len(states[TrialState.FAIL])))]
    busy = len(states[TrialState.RUNNING]) + len(states[TrialState.WAITING])
    if busy:
        facts.append(("running or queued", str(busy)))
    seconds = sum(float(t.user_attrs.get("seconds", 0.0)) for t in trials)
    facts += [("trial training time", duration(seconds)),
              ("storage", "journal file in the folder" if url is None else "database"),
              ("report written", dt.datetime.now().strftime("%Y-%m-%d %H:%M"))]

    blocks: list[Block] = []
    description = study.user_attrs.get("description")
    if description:
        blocks.append(Para(description))
    blocks += [Heading(2, "Best trials", "best"), best_table(trials, names) if states[TrialState.COMPLETE]
               else Para("No trial has completed yet.", "warn")]
    blocks.append(Para(f"Objective: final-epoch validation accuracy (maximised). {len(states[TrialState.PRUNED])} "
                       f"trial(s) were pruned (stopped early by the pruner), {len(states[TrialState.FAIL])} failed.",
                       "note"))
    table = failed_table(trials)
    if table is not None:
        blocks.append(table)
    if finished:
        blocks += [Heading(2, "Optimisation history", "history"),
                   Image("sweep-history", history_figure(trials), "optimisation history",
                         "Each trial's validation accuracy in the order the trials were created; the line is the "
                         "best completed trial so far."),
                   Image("sweep-curves", curves_figure(trials), "validation curves of every trial",
                         "Validation accuracy per epoch of every trial, as reported to the pruner; pruned trials "
                         "dashed, ending where they were stopped.")]
    values, why = importances(study)
    blocks.append(Heading(2, "Parameter importances", "importance"))
    if values:
        blocks += [Table([Column("parameter", "l"), Column("importance")],
                         [[f"`{k}`", f"{v:.3f}"] for k, v in values.items()],
                         caption="Optuna's PED-ANOVA importances over the completed trials: how far each "
                                 "parameter's values among the best 10% of trials differ from its values over all "
                                 "of them, normalised to sum to 1. With few trials they are rough."),
                   Image("sweep-importance", importance_figure(values), "parameter importances")]
    else:
        blocks.append(Para(f"Unavailable: {why}.", "note"))
    if names and states[TrialState.COMPLETE]:
        blocks += [Heading(2, "Slice plot", "slice"),
                   Image("sweep-slice", slice_figure(trials, names), "validation accuracy against each parameter",
                         "Final validation accuracy of each completed trial against each parameter's value; colour "
                         "= trial number (later trials are TPE's choices).")]
    blocks += final_blocks(folder, data_root)
    spec = study.user_attrs.get("spec")
    if spec:
        blocks += [Heading(2, "Sweep spec", "spec"), Pre(spec)]
    return Document(study.study_name, facts, blocks)


def write_sweep_report(folder: str | Path, url: str | None = None, data_root: str | None = None) -> tuple[Path, Path]:
    """Write folder/report.html and folder/report.md for a sweep."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return write_document(build_sweep_report(folder, url, data_root), folder)
