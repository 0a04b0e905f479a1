"""The learning-rate range test (`cifarlab lr-find`) and `--lr auto` in train and in study specs."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_TRAIN
from explain_helpers import write_data
from test_cli import FAST, SMALL, assert_one_line_error

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_data(tmp_path_factory.mktemp("data") / "cifar", n_train=8, n_test=2)


@pytest.fixture(scope="module")
def splits(data):
    from cifarlab.data import load_cifar10, make_splits

    return make_splits(load_cifar10(data))


def _test(splits, steps=150, start=1e-4, end=100.0, **train):
    from cifarlab.config import LRFindConfig, OptimConfig, TrainConfig
    from cifarlab.lrfind import range_test
    from cifarlab.models import create_model

    torch.manual_seed(0)
    model = create_model("s8-net", width=8)
    cfg = TrainConfig(batch_size=16, augment="none", device="cpu", compile="off", optim=OptimConfig(), **train)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = range_test(model, splits.train, cfg, LRFindConfig(start_lr=start, end_lr=end, steps=steps),
                        torch.device("cpu"))
    return result, model, before


def test_the_curve_falls_then_rises_and_the_suggestion_lies_inside_the_range(splits):
    from cifarlab.lrfind import DIVERGED

    result, _, _ = _test(splits)
    smoothed = np.asarray(result.smoothed)
    best = int(smoothed.argmin())
    assert 0.2 * len(smoothed) < best < len(smoothed) - 1  # a minimum inside, not at either end
    assert smoothed[best] < 0.9 * smoothed[0]  # it learned: the loss fell
    # Then it blew up, and stopped at the first smoothed loss above 4x the best (still finite: 290 raw here).
    assert result.stopped == "diverged" and len(result.lrs) < 150
    assert smoothed[-1] > DIVERGED * smoothed.min() and (smoothed[:-1] <= DIVERGED * smoothed.min()).all()
    assert np.isfinite(result.losses).all()
    assert 1e-4 <= result.suggestion <= 100.0
    assert result.suggestion == pytest.approx(result.lrs[best] / 10)
    assert result.lrs[0] <= result.steepest_lr <= result.lrs[best]
    lrs = np.asarray(result.lrs)  # exponential: a constant ratio from step to step
    assert np.allclose(lrs[1:] / lrs[:-1], (100.0 / 1e-4) ** (1 / 149))


def test_a_loss_that_turns_nan_stops_the_test_there(splits):
    from cifarlab.config import LRFindConfig, TrainConfig
    from cifarlab.lrfind import range_test
    from cifarlab.models import create_model

    class NanAfter(torch.nn.Module):  # finite for 12 training steps, then NaN
        def __init__(self):
            super().__init__()
            self.net, self.calls = create_model("s8-net", width=8), 0

        def forward(self, x):
            self.calls += self.training
            out = self.net(x)
            return out * float("nan") if self.calls > 12 else out

    result = range_test(NanAfter(), splits.train, TrainConfig(batch_size=16, augment="none"),
                        LRFindConfig(start_lr=1e-4, end_lr=1e-3, steps=40), torch.device("cpu"))
    assert result.stopped == "not finite" and len(result.lrs) == 12 and np.isfinite(result.smoothed).all()
    assert "the loss was not finite" in result.line()


def test_the_model_is_left_as_it_was(splits):
    _, model, before = _test(splits, steps=30, end=1.0)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN statistics
    assert all(p.grad is None for p in model.parameters()) and model.training


def test_a_ramp_that_never_diverges_runs_to_the_end_and_says_so(splits):
    result, _, _ = _test(splits, steps=40, start=1e-6, end=1e-5)
    assert result.stopped == "end" and len(result.lrs) == 40
    assert ("raise --end-lr" in result.line()) == (result.best == 39)  # the advice exactly when still falling


def test_the_norm_groups_follow_norm_lr_scale(splits, monkeypatch):
    # The ramp is the peak lr; biases and norm parameters get it times norm_lr_scale, as in training.
    from cifarlab.config import OptimConfig
    from cifarlab.step import TrainStep

    seen = []
    original = TrainStep.run

    def spy(self, x, y, i):
        original(self, x, y, i)
        seen.append([g["lr"] for g in self.opt.param_groups])

    monkeypatch.setattr(TrainStep, "run", spy)
    from cifarlab.config import LRFindConfig, TrainConfig
    from cifarlab.lrfind import range_test
    from cifarlab.models import create_model

    cfg = TrainConfig(batch_size=16, augment="none", optim=OptimConfig(norm_lr_scale=3.0))
    result = range_test(create_model("s8-net", width=8), splits.train, cfg,
                        LRFindConfig(start_lr=1e-3, end_lr=1e-2, steps=10), torch.device("cpu"))
    assert [s[0] for s in seen] == pytest.approx(result.lrs)
    assert [s[1] for s in seen] == pytest.approx([3 * lr for lr in result.lrs])


def test_a_model_whose_loss_is_nan_from_the_start_is_one_error(splits):
    from cifarlab.config import LRFindConfig, TrainConfig
    from cifarlab.errors import ConfigError
    from cifarlab.lrfind import range_test
    from cifarlab.models import create_model

    model = create_model("s8-net", width=8)
    with torch.no_grad():
        model.C10.weight.fill_(float("nan"))
    with pytest.raises(ConfigError, match="first loss is not finite"):
        range_test(model, splits.train, TrainConfig(batch_size=16), LRFindConfig(steps=10), torch.device("cpu"))


# ---------------------------------------------------------------------------------------------
# The command


def test_lr_find_writes_its_plot_and_points_and_nothing_else(cli, data, tmp_path):
    out = tmp_path / "lrf"
    result = cli("lr-find", "--data", data, *FAST, *SMALL, "--steps", "60", "--end-lr", "50", "--out", out)
    assert result.code == 0, result.err
    assert "suggested peak lr" in result.out and "on 40 training images" in result.out  # FAST's --subset 40
    assert sorted(p.name for p in out.iterdir()) == ["lr_find.csv", "lr_find.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lrf"]  # no run folder beside it
    rows = list(csv.DictReader((out / "lr_find.csv").open()))
    assert list(rows[0]) == ["step", "lr", "loss", "smoothed_loss"] and 10 <= len(rows) <= 60
    assert (out / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    suggested = float(result.out.split("suggested peak lr ")[1].split()[0])
    smoothed = [float(r["smoothed_loss"]) for r in rows]
    assert suggested == pytest.approx(float(rows[int(np.argmin(smoothed))]["lr"]) / 10, rel=1e-2)


@pytest.mark.parametrize("flags, needle", [
    (("--steps", "3"), "--steps: must be >= 10"),
    (("--start-lr", "1", "--end-lr", "0.5"), "--end-lr: must be above start_lr"),
    (("--start-lr", "0"), "--start-lr: must be > 0"),
])
def test_bad_range_flags_are_one_line_before_any_data_is_read(cli, tmp_path, flags, needle):
    assert_one_line_error(cli("lr-find", "--data", tmp_path / "nowhere", *flags, "--out", tmp_path / "o"), needle)
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------
# --lr auto


def test_train_lr_auto_runs_the_test_on_the_training_split_and_records_both(cli, data, tmp_path):
    out = tmp_path / "run"
    result = cli("train", "--data", data, *FAST, *SMALL, "--lr", "auto", "--val", "20", "--schedule", "none",
                 "--out", out)
    assert result.code == 0, result.err
    # 80 images, 20 held out for validation, then FAST's --subset 40 of the other 60: the test sees those 40.
    assert "lr auto: suggested peak lr" in result.out and "on 40 training images" in result.out
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["optim"]["lr"] == "auto"  # what the user asked
    history = json.loads((out / "history.json").read_text())
    found = history["meta"]["lr_auto"]
    assert found["split"] == "train" and found["images"] == 40 == history["meta"]["train_images"]
    assert history["epochs"][0]["lr"] == pytest.approx(found["lr"])  # the lr used (schedule none: constant)
    assert found["lr"] == pytest.approx(found["minimum_lr"] / 10)
    rows = list(csv.DictReader((out / "lr_find.csv").open()))
    assert len(rows) == found["steps"] and (out / "lr_find.png").exists()
    # model.pt knows "auto" too, and predict/export read it like any run.
    assert cli("predict", out, data / "test" / "cat" / "000.png").code == 0


def test_fit_takes_lr_auto_too(data):
    import cifarlab

    history = cifarlab.fit("s8-net", options={"width": 8}, data=data, lr="auto", epochs=1, batch_size=16,
                           augment="none", device="cpu", compile="off", log=None)
    assert history.meta["lr_auto"]["lr"] > 0 and history.lr_find is not None


@pytest.mark.parametrize("value, needle", [("fast", "expected a number or 'auto', got 'fast'"),
                                           ("nan", "must be a finite number"), ("-1", "must be > 0")])
def test_a_bad_lr_is_one_line(cli, tmp_path, value, needle):
    assert_one_line_error(cli("train", "--data", tmp_path / "nowhere", "--lr", value), f"--lr: {needle}")


SPEC = """
name = "autolr"
[data]
root = "{root}"
[model]
name = "s8-net"
options = {{ width = 8 }}
""" + TINY_TRAIN + """optim = {{ lr = {lr} }}
[[experiments]]
name = "auto"
"""


def test_a_study_with_lr_auto_resumes_without_refusing_its_finished_runs(cli, data, tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text(SPEC.format(root=data, lr='"auto"'))
    first = cli("study", spec, "--out", tmp_path / "st")
    assert first.code == 0, first.err
    again = cli("study", spec, "--out", tmp_path / "st")
    assert again.code == 0, again.err
    assert "1 already finished, 0 to run" in again.out
    # A spec that now fixes the lr is a different configuration: refused as any change is.
    spec.write_text(SPEC.format(root=data, lr="0.1"))
    assert_one_line_error(cli("study", spec, "--out", tmp_path / "st"), "different configuration")


def test_a_bad_lr_in_a_spec_names_the_key(cli, data, tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text(SPEC.format(root=data, lr='"fastest"'))
    assert_one_line_error(cli("study", spec, "--out", tmp_path / "st"), "train.optim.lr",
                          "expected a number or 'auto'")
