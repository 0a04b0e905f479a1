"""Turn validation sweeps into benchmark rows: each norm's best trial, retrained on all data.

  python bench/tuned.py SWEEP_DIR [SWEEP_DIR ...] OUT.toml [--seeds 5] [--storage URL]

Each SWEEP_DIR is a `cifarlab sweep` folder (e.g. of studies/tune/budget-bn.toml, -gn, -ln); with
--storage, the search is read from that database. For each norm the best completed trial of the
sweeps (Optuna's objective: final-epoch validation accuracy) wins; OUT.toml is a study spec that
trains the winners with the validation images put back (data.val = 0). The test set is never read
here: trials have none.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import tomli_w

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from cifarlab.config import to_dict  # noqa: E402
from cifarlab.models import model_options  # noqa: E402
from cifarlab.sweep.results import best_trial, open_existing, stored_spec, winner_config  # noqa: E402


def winners(sweep_dirs: list[str | Path], url: str | None = None) -> list[dict]:
    """[{norm, experiment, val, n, config}] for each norm (bn, gn, ln order): the best trial of the sweeps."""
    best: dict[str, dict] = {}
    for folder in sweep_dirs:
        study = open_existing(Path(folder), url)
        trial = best_trial(study)
        cfg = to_dict(winner_config(stored_spec(study), trial))
        model = cfg["model"]
        norm = model["options"].get("norm", model_options(model["name"]).get("norm"))
        if norm not in best or trial.value > best[norm]["val"]:
            best[norm] = {"norm": norm, "experiment": f"{study.study_name} trial {trial.number}", "val": trial.value,
                          "n": 1, "config": cfg}
    order = {"bn": 0, "gn": 1, "ln": 2}
    return [best[k] for k in sorted(best, key=lambda k: (order.get(k, 3), k))]


def _without_none(d: dict) -> dict:
    # TOML has no null: a setting stored as None is left out, so the spec falls back to its default.
    return {k: _without_none(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}


def spec_text(sweep_dirs: list[str | Path], name: str, seeds: int, url: str | None = None) -> str:
    """A study spec that retrains each norm's winner on all training images."""
    experiments = []
    for i, w in enumerate(winners(sweep_dirs, url)):
        cfg = w["config"]
        experiments.append(_without_none({
            "name": w["norm"], "description": f"{w['experiment']} (val {100 * w['val']:.2f}%, n={w['n']})",
            **({"baseline": True} if i == 0 else {}),
            "data": {k: v for k, v in cfg["data"].items() if k != "root"},  # val is 0: every training image
            "model": cfg["model"],
            "train": {k: v for k, v in cfg["train"].items() if k not in ("seed", "device")}}))
    spec = {"name": name, "description": "the recipes chosen on the validation split, trained on all 50,000 images",
            "seeds": seeds, "budget": {"max_params": 50000, "max_epochs": 20}, "experiments": experiments}
    return (f"# Written by bench/tuned.py from the validation sweeps {', '.join(map(str, sweep_dirs))}.\n"
            + tomli_w.dumps(spec))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="+", metavar="SWEEP_DIR... OUT.toml", help="sweep folders, then the spec to write")
    p.add_argument("--name", default="budget-tuned")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--storage", metavar="URL", help="the sweeps' PostgreSQL URL, when they are stored there")
    args = p.parse_args()
    if len(args.paths) < 2:
        p.error("give at least one sweep folder and the spec to write")
    *sweeps, out = args.paths
    Path(out).write_text(spec_text(sweeps, args.name, args.seeds, args.storage))
    for w in winners(sweeps, args.storage):
        print(f"{w['norm']}: {w['experiment']} (val {100 * w['val']:.2f}%, n={w['n']})")


if __name__ == "__main__":
    main()
