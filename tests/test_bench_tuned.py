"""bench/tuned.py: a validation sweep becomes benchmark rows (best per norm, val images put back)."""
from __future__ import annotations

import importlib.util
import statistics
from pathlib import Path

import pytest

from cifarlab.store import Store
from cifarlab.study import load_spec, run_study

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("single_thread")


def _tuned():
    spec = importlib.util.spec_from_file_location("tuned", REPO / "bench" / "tuned.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_best_validation_recipe_per_norm_is_retrained_on_all_images(tmp_path, make_folder):
    data = make_folder(n_train=12, n_test=2).root
    tune = tmp_path / "tune.toml"
    tune.write_text(f"""
name = "tune"
[data]
root = "{data}"
val = 40
[model]
name = "budget-net"
options = {{ w1 = 8, w2 = 8, w3 = 8, stem = 8 }}
[train]
epochs = 2
batch_size = 16
augment = "none"
[train.optim]
lr = 0.05
[[experiments]]
name = "bn-slow"
[[experiments]]
name = "bn-fast"
model = {{ options = {{ pool = "late" }} }}
train = {{ alt_flip = true, augment = "flip", optim = {{ lr = 0.5 }} }}
[[experiments]]
name = "gn"
model = {{ options = {{ norm = "gn" }} }}
""")
    folder = run_study(load_spec(tune), out=tmp_path / "tune", seeds=2, log=lambda s: None)
    with Store(folder) as store:
        runs = store.runs()
    val = {e: statistics.mean(r.val_acc for r in runs if r.experiment == e) for e in ("bn-slow", "bn-fast")}
    best_bn = max(val, key=val.get)

    tuned = _tuned()
    assert [(w["norm"], w["experiment"], w["n"]) for w in tuned.winners(folder)] == [("bn", best_bn, 2), ("gn", "gn", 2)]
    out = tmp_path / "bench.toml"
    out.write_text(tuned.spec_text(folder, "bench-tuned", seeds=3))
    spec = load_spec(out)
    assert spec.seeds == 3 and [e.name for e in spec.experiments] == ["bn", "gn"]
    bn = spec.experiments[0].config
    chosen = next(r for r in runs if r.experiment == best_bn).config
    assert bn.data.val == 0 and bn.data.root is None  # all training images; data found as usual
    assert bn.model.options == chosen["model"]["options"]
    assert bn.train.alt_flip == chosen["train"]["alt_flip"]
    assert bn.train.optim.lr == chosen["train"]["optim"]["lr"]
    assert spec.experiments[1].config.model.options["norm"] == "gn"
    assert best_bn in spec.experiments[0].description
