"""Print a study folder's runs grouped by experiment: mean +/- std of val / test / TTA accuracy and seconds.

Usage: python bench/summary.py STUDY_DIR [STUDY_DIR ...]
"""
from __future__ import annotations

import statistics
import sys

from cifarlab.store import Store


def _ms(values: list[float | None]) -> str:
    vals = [100 * v for v in values if v is not None]
    if not vals:
        return "-"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.2f}+/-{sd:.2f}"


def summarise(folder: str) -> None:
    with Store(folder, create=False) as store:
        runs, meta = store.runs(), store.meta()
    order = meta.get("experiments") or sorted({r.experiment for r in runs})
    # With a validation split the study is for choosing settings: keep the test set out of sight.
    hide_test = any(r.val_acc is not None for r in runs)
    print(f"\n## {meta.get('name', folder)} ({folder})")
    print(f"{'experiment':<24} {'n':>2} {'val %':>12} {'test %':>12} {'tta %':>12} {'tta6 %':>12} {'train %':>12} {'s/run':>7} {'warm s':>7}")
    for name in order:
        rs = [r for r in runs if r.experiment == name]
        if not rs:
            continue
        print(f"{name:<24} {len(rs):>2} {_ms([r.val_acc for r in rs]):>12} {'hidden' if hide_test else _ms([r.test_acc for r in rs]):>12} "
              f"{'hidden' if hide_test else _ms([r.test_acc_tta for r in rs]):>12} "
              f"{'hidden' if hide_test else _ms([r.test_acc_tta6 for r in rs]):>12} {_ms([r.train_acc for r in rs]):>12} "
              f"{statistics.mean(r.seconds for r in rs):>7.1f} {statistics.mean(r.warmup_seconds for r in rs):>7.1f}")


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        summarise(arg)
