"""Plain-sentence findings computed from the numbers: each experiment against the baseline.

A difference counts as "beyond seed noise" when Welch's t-test gives p < 0.05; whether the two
95% intervals overlap is said alongside. With one seed on either side nothing can be claimed.
"""
from __future__ import annotations

import math

from cifarlab.report.stats import Summary, intervals_overlap, summarize, welch_t_test
from cifarlab.report.study import Experiment, Study

ALPHA = 0.05
SAME_POINTS = 0.05  # differences below this many accuracy points are reported as "unchanged"


def fmt_p(p: float) -> str:
    if p < 0.001:
        return "p<0.001"
    return f"p={p:.3f}" if p < 0.1 else f"p={p:.2f}"


def noise_verdict(a: list[float], b: list[float]) -> str:
    """'Welch p=0.002: beyond seed noise', '... within seed noise', or why it cannot be told."""
    test = welch_t_test(a, b)
    if test is None:
        return "cannot be separated from seed noise with a single seed"
    overlap = intervals_overlap(summarize(a), summarize(b))
    if test.p < ALPHA:
        if overlap:
            return f"Welch {fmt_p(test.p)}: beyond seed noise, though the 95% intervals overlap"
        return f"Welch {fmt_p(test.p)}, 95% intervals apart: beyond seed noise"
    return f"Welch {fmt_p(test.p)}: within seed noise"


def _seeds(a: Summary, b: Summary) -> str:
    if a.n == b.n:
        return f"n={a.n} seed{'s' if a.n != 1 else ''} each"
    return f"n={a.n} vs {b.n} seeds"


def _subject(exp: Experiment) -> str:
    return f"**{exp.name}** ({exp.description})" if exp.description else f"**{exp.name}**"


def effect_sentence(exp: Experiment, ref: Experiment) -> str:
    """One sentence: the effect of `exp` on test accuracy and on the train-test gap, against `ref`."""
    test_e, test_r = exp.values("test_acc"), ref.values("test_acc")
    gap_e, gap_r = exp.values("gap"), ref.values("gap")
    se, sr = summarize(test_e), summarize(test_r)
    ge, gr = summarize(gap_e), summarize(gap_r)
    diff = 100 * (se.mean - sr.mean)
    verb = ("leaves test accuracy unchanged" if abs(diff) < SAME_POINTS
            else f"{'raises' if diff > 0 else 'lowers'} test accuracy by {abs(diff):.1f} points")
    text = (f"{_subject(exp)} {verb} ({100 * sr.mean:.1f}% \u2192 {100 * se.mean:.1f}%, {_seeds(se, sr)}, "
            f"{noise_verdict(test_e, test_r)})")
    gap_diff = 100 * (ge.mean - gr.mean)
    if abs(gap_diff) < SAME_POINTS:
        text += f" and leaves the train-test gap at {100 * ge.mean:.1f} points"
    else:
        # "Narrows"/"widens" only reads right for a positive gap (overfitting); a negative gap (train
        # accuracy, measured on augmented batches, below test) just goes up or down.
        verb = ("widens" if gap_diff > 0 else "narrows") if gr.mean > 0 and ge.mean > 0 else \
            ("raises" if gap_diff > 0 else "lowers")
        text += f" and {verb} the train-test gap from {100 * gr.mean:.1f} to {100 * ge.mean:.1f} points"
    if welch_t_test(gap_e, gap_r) is not None:
        text += f" ({noise_verdict(gap_e, gap_r)})"
    text += "."
    return text + _cost_sentence(exp, ref)


def _cost_sentence(exp: Experiment, ref: Experiment) -> str:
    """'It uses 1.9x the parameters ...' when parameters (>1%) or training time (>15%) differ."""
    parts = []
    pe, pr = summarize(exp.values("params")).mean, summarize(ref.values("params")).mean
    if pr > 0 and abs(pe / pr - 1) > 0.01:
        parts.append(f"{pe / pr:.2f}\u00d7 the parameters ({pe:,.0f} vs {pr:,.0f})")
    te, tr = summarize(exp.values("seconds")).mean, summarize(ref.values("seconds")).mean
    if tr > 0 and abs(te / tr - 1) > 0.15:
        parts.append(f"{te / tr:.2f}\u00d7 the training time per run")
    return f" It uses {' and '.join(parts)}." if parts else ""


def reference(study: Study) -> Experiment:
    """The experiment others are compared with: the baseline, else the first experiment."""
    return study.experiment(study.baseline) if study.baseline else study.experiments[0]


def insights(study: Study) -> list[str]:
    """The report's findings, most important first."""
    ref = reference(study)
    others = [e for e in study.experiments if e is not ref]
    out: list[str] = []
    if not others:
        out.append(f"Only one experiment (**{ref.name}**) has finished runs, so there is nothing to compare yet.")
    else:
        s = summarize(ref.values("test_acc"))
        if not study.baseline:
            against = f"the first experiment, **{ref.name}** (the spec names no baseline)"
        elif ref.name.lower() == "baseline":
            against = f"**{ref.name}**"
        else:
            against = f"the baseline, **{ref.name}**"
        out.append(f"Each experiment against {against}, at {100 * s.mean:.1f}% final test accuracy (n={s.n}):")
        out.extend(effect_sentence(e, ref) for e in others)
        best = max(study.experiments, key=lambda e: summarize(e.values("test_acc")).mean)
        s = summarize(best.values("test_acc"))
        spread = f" \u00b1 {100 * s.std:.1f}" if s.has_spread else ""
        out.append(f"Highest mean final test accuracy: **{best.name}**, {100 * s.mean:.1f}%{spread} "
                   f"(n={s.n}).")
    stds = [100 * summarize(e.values("test_acc")).std for e in study.experiments if len(e.runs) > 1]
    if stds:
        lo, hi = min(stds), max(stds)
        span = f"{lo:.2f} points" if math.isclose(lo, hi, abs_tol=0.005) else f"{lo:.2f} to {hi:.2f} points"
        out.append(f"Seed noise: the std of final test accuracy over seeds is {span}; differences of that "
                   "size are not findings.")
    else:
        out.append("Every experiment has a single seed, so no difference can be separated from seed noise; "
                   "run more seeds to compare.")
    return out
