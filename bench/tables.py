"""Print one results folder's tables as Markdown: the GPU sections of BENCHMARKS.md.

  python bench/tables.py bench/results/2026-11-27-h100

Reads only the folder: `session.toml` (date, device, commit, commands, notes, and any figure that has no
raw output), every `*.tgz` (study stores and run folders), `*.log` (a study's wall time) and
`profile-NAME.json` or else `profile-NAME.txt`. Accuracy is the final epoch's; mean +/- sample std over
seeds, n stated. Nothing is measured here.
"""
from __future__ import annotations

import json
import re
import statistics
import sys
import tarfile
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.append(str(HERE))  # behind the standard library: bench/profile.py must not stand in for `profile`

from cifarlab.store import RunRecord, Store  # noqa: E402
from profile_stats import ProfileSummary, from_table_text  # noqa: E402

# (study or run folder, experiment, metric, target %, where the target is set); final epoch, mean over seeds.
ACCURACY_TARGETS = tuple(
    (study, exp, metric, target, "issue 5") for study in ("budget", "budget-tuned") for exp, metric, target in (
        ("bn", "test_acc", 87.5), ("bn", "test_acc_tta", 88.5), ("gn", "test_acc_tta", 86.5), ("ln", "test_acc_tta", 86.5))
) + (
    ("bench-s8", "bn", "test_acc", 85.0, "issue 5"),  # s8-net's fast recipe
    ("bench-s8", "gn", "test_acc", 80.0, "issue 5"),
    ("bench-s8", "ln", "test_acc", 80.0, "issue 5"),
    ("s8-default", None, "test_acc", 80.0, "issue 2"),
    ("normalization", "bn", "test_acc", 80.0, "issue 2"),
)
METRIC_NAMES = {"test_acc": "single view", "test_acc_tta": "flip TTA"}
BUDGET_RUN_S = 2.0  # issue 5: one 20-epoch budget-net run, compile time apart
S8_RUN_S = 4.0  # issue 11: s8-net, 20 epochs, compile time apart
NORM_STUDY_S = 60.0  # issue 5: the normalisation study, 3 norms x 5 seeds, wall time including compilation


@dataclass
class Results:
    """Everything one results folder holds, read once."""

    folder: Path
    session: dict
    studies: dict[str, tuple[dict, list[RunRecord]]] = field(default_factory=dict)  # name -> (meta, runs)
    runs: dict[str, dict] = field(default_factory=dict)  # run folder name -> {"config", "history"}
    study_walls: dict[str, float] = field(default_factory=dict)  # study name -> seconds, from its log
    # name -> (summary, wall ms per step with the profiler on, and off when the profile measured it)
    profiles: dict[str, tuple[ProfileSummary, float | None, float | None]] = field(default_factory=dict)


def load(folder: Path, scratch: Path) -> Results:
    """Read `folder`; archives are unpacked into `scratch`."""
    res = Results(folder, tomllib.loads((folder / "session.toml").read_text()))
    for archive in sorted(folder.glob("*.tgz")):
        dest = scratch / archive.stem
        with tarfile.open(archive) as tar:
            # The "data" filter refuses absolute paths and links out of dest (Python >= 3.11.4).
            tar.extractall(dest, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        for store_path in sorted(dest.rglob("store.sqlite")):
            with Store(store_path.parent, create=False) as store:
                meta, records = store.meta(), store.runs()
            # Two stores of one name (the budget step and bench/bench.py's untuned rows): keep both.
            name = meta["name"] if meta["name"] not in res.studies else f"{meta['name']} ({archive.stem})"
            res.studies[name] = (meta, records)
        for hist in sorted(dest.rglob("history.json")):
            if not any((p / "store.sqlite").exists() for p in hist.parents if p != dest.parent):
                res.runs[hist.parent.name] = {"config": json.loads((hist.parent / "config.json").read_text()),
                                              "history": json.loads(hist.read_text())}
    for log in sorted(folder.glob("*.log")):
        text = log.read_text()
        name, done = re.search(r"^study '([^']+)'", text, re.M), re.search(r"^done in ([0-9.]+)s", text, re.M)
        if name and done:
            res.study_walls[name.group(1)] = float(done.group(1))
    for txt in sorted(folder.glob("profile-*.txt")):
        name = txt.stem.removeprefix("profile-")
        saved = txt.with_suffix(".json")
        if saved.exists():  # bench/profile.py --json: the figures as data, launch rows complete
            data = json.loads(saved.read_text())
            if data["summary"] is None:  # a --cpu profile: no GPU figures to show
                continue
            res.profiles[name] = (ProfileSummary(**data["summary"]), data["wall_ms_profiled"],
                                  data["wall_ms_unprofiled"])
        else:  # older profiles: the tables are the profiler's own, the summary line may not be
            wall = re.search(r"wall per step ([0-9.]+) ms \(median", txt.read_text())
            res.profiles[name] = (from_table_text(txt.read_text()), float(wall.group(1)) if wall else None, None)
    return res


def markdown(header: list[str], rows: list[list]) -> str:
    """A GitHub Markdown table; cells are rendered with str()."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _ms(values) -> str:
    vals = [100 * v for v in values if v is not None]
    if not vals:
        return "-"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.2f} +/- {sd:.2f}" if len(vals) > 1 else f"{vals[0]:.2f}"


def _mean(values) -> float:
    return statistics.mean(v for v in values if v is not None)


def _cmd(res: Results, key: str) -> str:
    cmd = res.session.get("commands", {}).get(key)
    return f"`{cmd}`" if cmd else "(command not recorded)"


def _steps(history: dict) -> int:
    return history["meta"]["steps_per_epoch"] * len(history["epochs"])


def study_table(res: Results, name: str) -> tuple[list[str], list[list]]:
    """Header and rows of one study; a study over a validation split shows no test figure."""
    meta, records = res.studies[name]
    # With a validation split the study is for choosing settings: keep the test set out of sight
    # (as bench/summary.py does).
    val = any(r.val_acc is not None for r in records)
    header = ["experiment", "recipe", "n"] + (["val %"] if val else ["test %", "flip TTA %", "6-view TTA %"])
    rows = []
    for exp in meta.get("experiments") or sorted({r.experiment for r in records}):
        rs = [r for r in records if r.experiment == exp]
        acc = ([_ms(r.val_acc for r in rs)] if val else
               [_ms(r.test_acc for r in rs), _ms(r.test_acc_tta for r in rs), _ms(r.test_acc_tta6 for r in rs)])
        rows.append([f"**{exp}**", meta.get("descriptions", {}).get(exp, ""), len(rs), *acc,
                     _ms(r.train_acc for r in rs), f"{_mean(r.seconds for r in rs):.1f}",
                     f"{_mean(r.warmup_seconds for r in rs):.1f}"])
    return header + ["train %", "s/run", "compile s"], rows


def single_run_rows(res: Results) -> list[list]:
    rows = []
    for name, run in res.runs.items():
        h, last = run["history"], run["history"]["epochs"][-1]
        model = run["config"]["model"]
        opts = ", ".join(f"{k}={v}" for k, v in model["options"].items())
        rows.append([name, f"{model['name']} ({opts})", run["config"]["train"]["seed"], _ms([last["test_acc"]]),
                     _ms([last.get("test_acc_tta")]), _ms([last.get("test_acc_tta6")]), _ms([last["train_acc"]]),
                     f"{h['meta']['params']:,}", f"{h['meta']['train_seconds']:.1f}",
                     f"{h['meta']['warmup_seconds']:.1f}",
                     f"{1e3 * h['meta']['train_seconds'] / _steps(h):.2f}", f"{h['meta']['images_per_second']:,.0f}"])
    return rows


def compile_mode_rows(res: Results) -> list[list]:
    rows = []
    for m in res.session.get("compile_modes", []):
        steps = m["epochs"] * m["steps_per_epoch"]
        compile_s = f"{m['compile_seconds']:.1f}" + (f" ({m['compile_note']})" if m.get("compile_note") else "")
        mode = f"`{m['mode']}`" + (" (the CUDA default)" if m.get("cuda_default") else "")
        rows.append([mode, 1, f"**{m['train_seconds']:.1f}**", f"{1e3 * m['train_seconds'] / steps:.2f}",
                     compile_s, f"{m['test']:.2f}", f"{m['flip_tta']:.2f}"])
    return rows


def _unprofiled_ms(res: Results, key: str) -> str:
    """Training seconds / optimiser steps of the same set-up's run without the profiler (evaluation included)."""
    for m in res.session.get("compile_modes", []):
        if m["mode"] == key:
            return f"{1e3 * m['train_seconds'] / (m['epochs'] * m['steps_per_epoch']):.2f}"
    if key in res.runs:
        h = res.runs[key]["history"]
        return f"{1e3 * h['meta']['train_seconds'] / _steps(h):.2f}"
    return "-"


def profile_rows(res: Results) -> list[list]:
    rows = []
    listed = list(res.session.get("profiles", {}))
    for name in sorted(res.profiles, key=lambda n: (listed.index(n) if n in listed else len(listed), n)):
        s, wall_on, wall_off = res.profiles[name]
        key = res.session.get("profiles", {}).get(name, {}).get("unprofiled", "")
        off = f"{wall_off:.2f}" if wall_off else _unprofiled_ms(res, key) if key else "-"
        rows.append([name, s.steps, f"**{s.kernel_ms_per_step:.2f}**", f"{s.launches_per_step:.0f}",
                     f"{100 * s.conv_share:.0f}%", f"{wall_on:.2f}" if wall_on else "-", off])
    return rows


def target_rows(res: Results) -> list[list]:
    rows = []
    for where, exp, metric, target, source in ACCURACY_TARGETS:
        if where in res.studies:
            vals = [getattr(r, metric) for r in res.studies[where][1] if r.experiment == exp]
            what = f"{res.studies[where][1][0].model} {exp.upper()} ({where} study)"
        elif where in res.runs:
            vals = [res.runs[where]["history"]["epochs"][-1][metric]]
            model = res.runs[where]["config"]["model"]
            what = f"{model['name']} {model['options'].get('norm', '').upper()} ({where})"
        else:
            continue
        mean = 100 * statistics.mean(vals)
        rows.append([f"{what}, {METRIC_NAMES[metric]} >= {target}%", source, _ms(vals), len(vals),
                     f"{mean - target:+.2f} pts", "yes" if mean >= target else "**no**"])
    best = min(res.session.get("compile_modes", []), key=lambda m: m["train_seconds"], default=None)
    if best:
        rows.append([f"budget-net BN, one 20-epoch run <= {BUDGET_RUN_S} s of training", "issue 5",
                     f"{best['train_seconds']:.1f} s (`--compile {best['mode']}`)", 1,
                     f"{best['train_seconds'] - BUDGET_RUN_S:+.1f} s ({best['train_seconds'] / BUDGET_RUN_S:.1f}x)", "**no**"
                     if best["train_seconds"] > BUDGET_RUN_S else "yes"])
    for name, run in res.runs.items():
        if run["config"]["model"]["name"] == "s8-net" and run["config"]["train"]["epochs"] == 20:
            sec = run["history"]["meta"]["train_seconds"]
            rows.append([f"s8-net, 20 epochs <= {S8_RUN_S} s of training", "issue 11", f"{sec:.1f} s ({name})", 1,
                         f"{sec - S8_RUN_S:+.1f} s ({sec / S8_RUN_S:.1f}x)", "**no**" if sec > S8_RUN_S else "yes"])
    if "normalization" in res.study_walls and "normalization" in res.studies:
        wall, seeds = res.study_walls["normalization"], len({r.seed for r in res.studies["normalization"][1]})
        shared = "normalization" in res.session.get("shared_gpu", [])
        measured = f"{wall:.0f} s for 3 norms x {seeds} seeds" + (", GPU shared with another study" if shared else "")
        gap = f"{wall - NORM_STUDY_S:+.0f} s" if seeds == 5 and not shared else "not comparable"
        rows.append([f"normalisation study, 3 norms x 5 seeds < {NORM_STUDY_S:.0f} s including compilation",
                     "issue 5", measured, 1, gap, "yes" if wall < NORM_STUDY_S else "**no**"])
    return rows


def render(res: Results, command: str) -> str:
    s = res.session
    devices = sorted({r.device for _, rs in res.studies.values() for r in rs}
                     | {run["history"]["meta"]["device"] for run in res.runs.values()})
    out = [f"Measured {s['date']} on {s['device']} ({s['software']}), main at `{s['commit']}`, data: {s['data']}. "
           f"The runs name their device as: {', '.join(devices)}. Printed by `{command}`."]

    if res.runs:
        out += ["", "### Single runs", "",
                markdown(["run", "model", "seed", "test %", "flip TTA %", "6-view TTA %", "train %", "params",
                          "training s", "compile s", "ms per step", "train img/s"], single_run_rows(res))]
        for name in res.runs:
            out += ["", f"`{name}`: {_cmd(res, name)}. {s.get('notes', {}).get(name, '')}".rstrip()]
        out += ["", "Training s includes the per-epoch evaluation (with flip TTA); ms per step = training s / "
                "optimiser steps; train img/s counts the training loop alone."]
    for name in res.studies:
        wall = res.study_walls.get(name)
        out += ["", f"### Study `{name}`", "", f"{_cmd(res, name)}"
                + (f", {wall:.0f} s of wall time." if wall else "."), "",
                markdown(*study_table(res, name))]
        if name in s.get("notes", {}):
            out += ["", s["notes"][name]]
    if s.get("compile_modes"):
        out += ["", "### budget-net BN by compile mode, one 20-epoch run each, alone on the GPU", "",
                _cmd(res, "compile-modes") + ". These two runs left no log or run folder; the figures are the "
                "session's notes, kept in `session.toml`. Per step: training s / optimiser steps "
                f"({s['compile_modes'][0]['epochs']} x {s['compile_modes'][0]['steps_per_epoch']}), the per-epoch "
                "evaluation included.", "",
                markdown(["`--compile`", "n", "training s", "ms per step", "compile s", "test %", "flip TTA %"],
                         compile_mode_rows(res))]
    if res.profiles:
        out += ["", "### Where a training step's time goes (torch.profiler)", "",
                markdown(["profile", "steps recorded", "GPU kernel ms per step", "launches + memsets per step",
                          "cuDNN convolutions", "wall ms per step, profiler on (median)",
                          "wall ms per step, profiler off"], profile_rows(res)), ""]
        out += [f"- `{name}`: `{p['command']}`" + (f". {p['note']}" if p.get("note") else "")
                for name, p in s.get("profiles", {}).items() if name in res.profiles]
        out += ["", "GPU kernel time = the table's `Self CUDA time total` / steps recorded; launches = the "
                "`cudaLaunchKernel`, `cuLaunchKernel`, `cudaLaunchKernelExC` and `cudaMemsetAsync` rows / steps; "
                "cuDNN convolutions = `aten::cudnn_convolution` + `aten::convolution_backward` as a share of the "
                "kernel time. Wall per step, profiler off = the last epoch's loop seconds / steps where "
                "`bench/profile.py --json` measured it, else training s / optimiser steps of the run that "
                "`session.toml` names as the same set-up without the profiler (evaluation included)."]
    rows = target_rows(res)
    if rows:
        out += ["", "### Against the targets", "",
                markdown(["target", "set in", "measured", "n", "gap", "met"], rows)]
    if s.get("not_run"):
        out += ["", "Not run in this session: " + "; ".join(s["not_run"]) + "."]
    return "\n".join(out)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not (Path(argv[0]) / "session.toml").is_file():
        print("usage: python bench/tables.py RESULTS_DIR (a folder with session.toml, e.g. "
              "bench/results/2026-11-27-h100)", file=sys.stderr)
        return 2
    folder = Path(argv[0])
    with tempfile.TemporaryDirectory(prefix="cifarlab-tables-") as scratch:
        print(render(load(folder, Path(scratch)), f"python bench/tables.py {argv[0].rstrip('/')}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
