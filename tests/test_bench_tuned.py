"""bench/tuned.py: validation sweeps become benchmark rows (each norm's best trial, val images put back)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from conftest import TINY_TRAIN

pytest.importorskip("optuna", reason="the [sweep] extra is not installed")

from cifarlab.study import load_spec  # noqa: E402
from cifarlab.sweep import load_sweep_spec  # noqa: E402
from cifarlab.sweep.results import best_trial, open_existing
from cifarlab.sweep.run import run_sweep  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("single_thread")


def _tuned():
    spec = importlib.util.spec_from_file_location("tuned", REPO / "bench" / "tuned.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sweep(tmp_path: Path, data: Path, norm: str, search: str) -> Path:
    path = tmp_path / f"{norm}.toml"
    path.write_text(f"""
name = "tune-{norm}"
[data]
root = "{data}"
val = 40
[model]
name = "budget-net"
options = {{ w1 = 8, w2 = 8, w3 = 8, stem = 8, norm = "{norm}" }}
{TINY_TRAIN}[sweep]
trials = 2
pruner = "none"
random_trials = 2
[search]
{search}
""")
    return run_sweep(load_sweep_spec(path), tmp_path / norm, log=lambda s: None)


def test_each_norms_best_trial_is_retrained_on_all_images(tmp_path, make_folder):
    data = make_folder(n_train=12, n_test=2).root
    bn_sweep = sweep(tmp_path, data, "bn", 'train.optim.lr = { type = "float", low = 0.01, high = 0.5, log = true }\n'
                                       'model.options.pool = { type = "categorical", choices = ["early", "late"] }')
    gn = sweep(tmp_path, data, "gn", 'train.optim.lr = { type = "float", low = 0.01, high = 0.5, log = true }')
    best = {n: best_trial(open_existing(folder, None)) for n, folder in (("bn", bn_sweep), ("gn", gn))}

    tuned = _tuned()
    assert [(w["norm"], w["experiment"], w["val"]) for w in tuned.winners([bn_sweep, gn])] == [
        ("bn", f"tune-bn trial {best['bn'].number}", best["bn"].value),
        ("gn", f"tune-gn trial {best['gn'].number}", best["gn"].value)]
    out = tmp_path / "bench.toml"
    out.write_text(tuned.spec_text([bn_sweep, gn], "bench-tuned", seeds=3))
    spec = load_spec(out)
    assert spec.seeds == 3 and [e.name for e in spec.experiments] == ["bn", "gn"]
    bn = spec.experiments[0].config
    assert bn.data.val == 0 and bn.data.root is None  # all training images; data found as usual
    assert bn.train.optim.lr == best["bn"].params["train.optim.lr"]
    assert bn.model.options["pool"] == best["bn"].params["model.options.pool"]
    assert bn.model.options["w1"] == 8 and bn.train.epochs == 1
    assert spec.experiments[1].config.model.options["norm"] == "gn"
    assert f"trial {best['bn'].number}" in spec.experiments[0].description
