"""Turn a validation sweep into benchmark rows: the best experiment per norm, retrained on all data.

  python bench/tuned.py TUNE_DIR OUT.toml [--seeds 5]

TUNE_DIR is a finished study over a validation split (e.g. studies/tune/budget.toml). For each
norm (bn/gn/ln) the experiment with the highest mean validation accuracy wins; OUT.toml is a study
spec that trains the winners with the validation images put back (data.val = 0). The test set is
never read here: the store's test figures are ignored.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import tomli_w

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from cifarlab.models import model_options  # noqa: E402
from cifarlab.store import Store  # noqa: E402


def winners(tune_dir: str | Path) -> list[dict]:
    """[{norm, experiment, val, n, config}] for each norm, best mean validation accuracy first."""
    with Store(Path(tune_dir)) as store:
        runs = [r for r in store.runs() if r.val_acc is not None]
    if not runs:
        raise SystemExit(f"{tune_dir}: no finished runs with a validation accuracy")
    by_exp: dict[str, list] = {}
    for r in runs:
        by_exp.setdefault(r.experiment, []).append(r)
    best: dict[str, dict] = {}
    for name, rs in by_exp.items():
        model = rs[0].config["model"]
        norm = model["options"].get("norm", model_options(model["name"]).get("norm"))
        val = statistics.mean(r.val_acc for r in rs)
        if norm not in best or val > best[norm]["val"]:
            best[norm] = {"norm": norm, "experiment": name, "val": val, "n": len(rs), "config": rs[0].config}
    order = {"bn": 0, "gn": 1, "ln": 2}
    return [best[k] for k in sorted(best, key=lambda k: (order.get(k, 3), k))]


def _without_none(d: dict) -> dict:
    # TOML has no null: a setting stored as None is left out, so the spec falls back to its default.
    return {k: _without_none(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}


def spec_text(tune_dir: str | Path, name: str, seeds: int) -> str:
    """A study spec that retrains each norm's winner on all training images."""
    experiments = []
    for i, w in enumerate(winners(tune_dir)):
        cfg = w["config"]
        experiments.append(_without_none({
            "name": w["norm"], "description": f"{w['experiment']} (val {100 * w['val']:.2f}%, n={w['n']})",
            **({"baseline": True} if i == 0 else {}),
            "data": {**{k: v for k, v in cfg["data"].items() if k != "root"}, "val": 0},
            "model": cfg["model"],
            "train": {k: v for k, v in cfg["train"].items() if k not in ("seed", "device")}}))
    spec = {"name": name, "description": "the recipes chosen on the validation split, trained on all 50,000 images",
            "seeds": seeds, "budget": {"max_params": 50000, "max_epochs": 20}, "experiments": experiments}
    return f"# Written by bench/tuned.py from the validation sweep in {tune_dir}.\n" + tomli_w.dumps(spec)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tune_dir")
    p.add_argument("out")
    p.add_argument("--name", default="budget-tuned")
    p.add_argument("--seeds", type=int, default=5)
    args = p.parse_args()
    Path(args.out).write_text(spec_text(args.tune_dir, args.name, args.seeds))
    for w in winners(args.tune_dir):
        print(f"{w['norm']}: {w['experiment']} (val {100 * w['val']:.2f}%, n={w['n']})")


if __name__ == "__main__":
    main()
