"""The training loop: learning, reproducibility, run folders, penalties, schedules, options."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from cifarlab.config import DataConfig, ModelConfig, OptimConfig, RegConfig, RunConfig, TrainConfig
from cifarlab.data import CLASSES, load_cifar10, make_splits
from cifarlab.experiment import run_experiment
from cifarlab.models import create_model
from cifarlab.optim import SCHEDULES, create_optimizer, create_schedule, param_groups, penalty, penalty_terms
from cifarlab.train import TTA_VIEWS, _translate, predict, seed_everything, train

pytestmark = pytest.mark.usefixtures("single_thread")

CPU = dict(device="cpu", compile="off", precision="fp32")
SMALL_S8 = {"width": 8, "dropout": 0.0}  # s8-net at a quarter of the width: same layout, fast on CPU
TIMINGS = ("seconds", "train_seconds")  # wall-clock columns: the only ones allowed to differ between runs


@pytest.fixture
def tiny_splits(make_folder):
    """200 generated training images (20 per class) and 30 test images, normalised."""
    return make_splits(load_cifar10(make_folder(n_train=20, n_test=3).root), val=20, seed=0)


# Every setting pinned here, so the tests do not move when the library's recommended defaults change.
PLAIN_OPTIM = dict(name="sgd", lr=0.05, momentum=0.9, nesterov=False, weight_decay=0.0, schedule="none")
PLAIN_REG = dict(label_smoothing=0.0)


def small_cfg(**kw) -> TrainConfig:
    """2 epochs, batch 32, crop+flip, plain SGD 0.05 without schedule or smoothing, on CPU in fp32."""
    optim = {**PLAIN_OPTIM, **kw.pop("optim", {})}
    reg = {**PLAIN_REG, **kw.pop("reg", {})}
    base = dict(epochs=2, batch_size=32, seed=0, augment="crop", ema=0.0, tta=False, **CPU)
    base.update(kw)
    return TrainConfig(optim=OptimConfig(**optim), reg=RegConfig(**reg), **base)


def fit(data, cfg: TrainConfig, model_options=None, name="s8-net"):
    seed_everything(cfg.seed)
    model = create_model(name, **(SMALL_S8 if model_options is None else model_options))
    return model, train(model, data, cfg, log=None)


def without_timings(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows]


# ---------------------------------------------------------------------------------------------
# It learns


# Settings measured on the real copy (2,000-image subset, split_seed 0, 2 epochs, CPU, one thread): Adam at
# batch 32 with a one-cycle schedule peaking at 2e-3 (crop+flip, label smoothing 0.1, decay 5e-4) reached
# 38.0 / 37.9 / 35.9 / 36.3 / 36.2 / 34.5 % final test accuracy for seeds 0-5 (mean 36.5 +/- 1.2 %, n = 6);
# seed 0, the one tested, 38.0 %. SGD 0.05 without a schedule reached ~29 % at batch 128 and 27-31 % at
# batch 32/64 (n = 3 each): too close to the bar. ~15-40 s on two shared cores.
LEARN = TrainConfig(
    epochs=2, batch_size=32, seed=0, augment="crop", ema=0.0, tta=False,
    optim=OptimConfig(name="adam", lr=0.002, momentum=0.9, weight_decay=5e-4, schedule="onecycle", warmup=0.2),
    reg=RegConfig(label_smoothing=0.1),
    **CPU,
)


@pytest.mark.realdata
def test_s8_net_on_2000_real_images_for_2_epochs_is_clearly_above_chance(real_cifar):
    data = make_splits(real_cifar, subset=2_000, seed=0)
    _, history = fit(data, LEARN, model_options={"width": 32, "dropout": 0.0, "norm": "bn"})
    final = history.final
    assert len(history.rows) == 2
    assert final["test_acc"] >= 0.30, f"test accuracy {final['test_acc']:.4f} (chance is 0.10)"
    assert final["train_loss"] < history.rows[0]["train_loss"]


# ---------------------------------------------------------------------------------------------
# Reproducibility


def test_same_seed_twice_gives_the_same_history(tiny_splits):
    cfg = small_cfg(seed=7, reg={"label_smoothing": 0.1})
    _, a = fit(tiny_splits, cfg, {"width": 8, "dropout": 0.1})  # dropout + crop/flip: every RNG in use
    _, b = fit(tiny_splits, cfg, {"width": 8, "dropout": 0.1})
    assert without_timings(a.rows) == without_timings(b.rows)
    assert {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "lr",
            "seconds"} <= set(a.rows[0])


def test_a_different_seed_gives_a_different_history(tiny_splits):
    _, a = fit(tiny_splits, small_cfg(seed=0))
    _, b = fit(tiny_splits, small_cfg(seed=1))
    assert [r["train_loss"] for r in a.rows] != [r["train_loss"] for r in b.rows]


def test_history_meta_describes_the_run(tiny_splits):
    _, h = fit(tiny_splits, small_cfg(batch_size=64))
    assert h.meta["train_images"] == 180
    assert h.meta["batch_size"] == 64
    assert h.meta["steps_per_epoch"] == 2  # the ragged last batch of 52 is dropped
    assert h.meta["device"].startswith("cpu")
    assert h.meta["compiled"] is False


def test_batch_size_larger_than_the_data_uses_one_full_batch(tiny_splits):
    _, h = fit(tiny_splits, small_cfg(batch_size=10_000, epochs=1))
    assert h.meta["batch_size"] == 180 and h.meta["steps_per_epoch"] == 1


# ---------------------------------------------------------------------------------------------
# Run folders


def run_cfg(root, epochs: int = 1) -> RunConfig:
    return RunConfig(data=DataConfig(root=str(root), subset=40), model=ModelConfig("s8-net", dict(SMALL_S8)),
                     train=small_cfg(epochs=epochs))


def test_run_experiment_writes_a_complete_run_that_reloads(tiny_folder, tmp_path):
    out = tmp_path / "runs" / "one"
    cfg = run_cfg(tiny_folder.root)
    history = run_experiment(cfg, out, log=None)
    assert sorted(p.name for p in out.iterdir()) == ["cams.npz", "config.json", "history.csv", "history.json",
                                                     "layers.json", "model.pt", "predictions.npz"]
    assert not [p for p in out.parent.iterdir() if p.name != "one"]  # no staging folder left behind

    config = json.loads((out / "config.json").read_text())
    assert config["model"] == {"name": "s8-net", "options": SMALL_S8, "source": {}}  # source: file models
    assert config["data"]["subset"] == 40 and config["train"]["epochs"] == 1
    assert config["version"]["cifarlab"]

    with (out / "history.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 and rows[0]["epoch"] == "1"
    assert math.isclose(float(rows[0]["test_acc"]), history.final["test_acc"], rel_tol=1e-5)
    stored = json.loads((out / "history.json").read_text())
    assert stored["epochs"] == history.rows
    assert stored["meta"]["params"] == history.meta["params"]

    ckpt = torch.load(out / "model.pt", weights_only=True)
    assert ckpt["classes"] == list(CLASSES)
    assert ckpt["config"]["version"]["torch"] == str(torch.__version__)  # a plain str, not TorchVersion
    fresh = create_model("s8-net", **ckpt["config"]["model"]["options"])
    fresh.load_state_dict(ckpt["state_dict"])
    fresh.eval()

    # The stored test probabilities are what the reloaded weights predict.
    data = make_splits(load_cifar10(tiny_folder.root), subset=40)
    assert ckpt["mean"] == list(data.mean)
    with torch.no_grad():
        probs = torch.softmax(fresh(data.test.x), 1).numpy()
    preds = np.load(out / "predictions.npz")
    assert preds["probs"].dtype == np.float16 and preds["probs"].shape == (20, 10)
    assert np.array_equal(preds["labels"], data.test.y.numpy())
    assert np.allclose(preds["probs"].astype(np.float32), probs, atol=2e-3)
    assert np.array_equal(preds["probs"].astype(np.float32).argmax(1), probs.argmax(1))


def test_an_interrupted_run_keeps_its_finished_epochs_as_incomplete(tiny_folder, tmp_path, monkeypatch):
    import cifarlab.train as train_mod

    real_row = train_mod._epoch_row
    calls = []

    def row_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_row(*args, **kwargs)

    monkeypatch.setattr(train_mod, "_epoch_row", row_then_interrupt)
    out = tmp_path / "runs" / "cut"
    with pytest.raises(KeyboardInterrupt):
        run_experiment(run_cfg(tiny_folder.root, epochs=3), out, log=None)
    assert not out.exists()  # nothing named like a finished run
    kept = tmp_path / "runs" / "cut.incomplete"
    assert len(json.loads((kept / "history.json").read_text())["epochs"]) == 1
    assert not (kept / "model.pt").exists()
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["cut.incomplete"]


# ---------------------------------------------------------------------------------------------
# L1 / L2 penalties (Keras kernel_regularizer semantics)


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 30 * 30, 10))


@pytest.mark.parametrize("field,power,layer", [("l1_conv", 1, 0), ("l2_conv", 2, 0),
                                                ("l1_dense", 1, 3), ("l2_dense", 2, 3)])
def test_penalty_is_lambda_times_the_kernel_norm_of_its_layer_group_only(field, power, layer):
    net = tiny_net()
    lam = 0.003
    w = net[layer].weight.detach()
    expected = lam * (w.abs().sum() if power == 1 else (w * w).sum())  # biases and BN never count
    terms = penalty_terms(net, RegConfig(**{field: lam}))
    assert len(terms) == 1 and terms[0][2] is net[layer].weight
    assert torch.allclose(penalty(terms), expected, rtol=1e-6)


def test_penalties_of_both_groups_add_up():
    net = tiny_net()
    reg = RegConfig(l1_conv=0.1, l2_conv=0.2, l1_dense=0.3, l2_dense=0.4)
    c, d = net[0].weight.detach(), net[3].weight.detach()
    expected = 0.1 * c.abs().sum() + 0.2 * c.pow(2).sum() + 0.3 * d.abs().sum() + 0.4 * d.pow(2).sum()
    assert torch.allclose(penalty(penalty_terms(net, reg)), expected, rtol=1e-6)


def test_no_penalty_without_lambdas():
    assert penalty_terms(tiny_net(), RegConfig()) == []
    assert penalty([]) == 0


def test_s8_net_has_only_conv_kernels_to_penalise():
    model = create_model("s8-net")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(penalty_terms(model, RegConfig(l2_conv=1e-4))) == len(convs) == 11
    assert penalty_terms(model, RegConfig(l2_dense=1e-4)) == []


def test_training_with_an_l2_penalty_shrinks_the_kernels(tiny_splits):
    def conv_norm(model):
        return sum(float(m.weight.detach().pow(2).sum()) for m in model.modules() if isinstance(m, nn.Conv2d))

    plain, _ = fit(tiny_splits, small_cfg(epochs=1))
    shrunk, h = fit(tiny_splits, small_cfg(epochs=1, reg={"l2_conv": 0.05}))
    assert conv_norm(shrunk) < 0.9 * conv_norm(plain)
    assert math.isfinite(h.final["train_loss"])


def test_weight_decay_applies_to_kernels_only():
    model = create_model("budget-net")
    decay, no_decay = param_groups(model, 5e-4, 0.1)
    kernels = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(p) for p in kernels}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize("schedule", ["linear", "onecycle", "step"])
def test_norm_lr_scale_multiplies_the_lr_of_biases_and_norm_parameters_throughout(schedule):
    model = create_model("budget-net")
    o = OptimConfig(lr=0.2, norm_lr_scale=8.0, schedule=schedule, step_epochs=1, gamma=0.5)
    opt = create_optimizer(model, o, torch.device("cpu"))
    sched = create_schedule(opt, o, epochs=3, steps_per_epoch=4)
    for step in range(12):
        kernels, norms = opt.param_groups
        assert norms["lr"] == pytest.approx(8.0 * kernels["lr"]), f"step {step}"
        opt.step()
        sched.step_batch()
        if step % 4 == 3:
            sched.step_epoch(1.0)
    assert kernels["lr"] < 0.2 or schedule == "step"


def test_alternating_flip_trains_reproducibly_and_differs_from_random_flips(tiny_splits):
    _, alt = fit(tiny_splits, small_cfg(alt_flip=True))
    _, again = fit(tiny_splits, small_cfg(alt_flip=True))
    _, rand = fit(tiny_splits, small_cfg())
    assert without_timings(alt.rows) == without_timings(again.rows)
    assert without_timings(alt.rows) != without_timings(rand.rows)


def test_the_trainer_initialises_a_whitening_stem_from_the_training_images_and_keeps_it_frozen(tiny_splits):
    from cifarlab.train import DATA_INIT_IMAGES

    options = {"whiten": True, "w1": 8, "w2": 8, "w3": 8}
    model, h = fit(tiny_splits, small_cfg(epochs=1, ema=0.9), options, name="budget-net")
    expected = create_model("budget-net", **options)
    x = tiny_splits.train.x
    expected.init_from_data(x[:: max(1, len(x) // DATA_INIT_IMAGES)][:DATA_INIT_IMAGES])
    assert torch.equal(model.stem.conv.weight, expected.stem.conv.weight)  # set from data, then never trained
    assert math.isfinite(h.final["train_loss"])


def test_a_non_positive_norm_lr_scale_is_refused():
    from cifarlab.errors import ConfigError

    with pytest.raises(ConfigError, match="norm_lr_scale: must be > 0, got 0"):
        OptimConfig(norm_lr_scale=0.0)


def test_alternating_flip_without_flips_is_refused_not_ignored():
    from cifarlab.errors import ConfigError

    with pytest.raises(ConfigError, match="alt_flip needs augment flip or crop"):
        TrainConfig(augment="none", alt_flip=True)
    TrainConfig(augment="flip", alt_flip=True)


# ---------------------------------------------------------------------------------------------
# Schedules


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_every_schedule_trains_two_epochs(tiny_splits, name):
    _, h = fit(tiny_splits, small_cfg(optim={"schedule": name, "step_epochs": 1, "gamma": 0.5}))
    assert len(h.rows) == 2
    assert all(math.isfinite(r["train_loss"]) and r["lr"] > 0 for r in h.rows)


def test_step_schedule_decays_the_recorded_lr_every_step_epochs(tiny_splits):
    _, h = fit(tiny_splits, small_cfg(epochs=3, optim={"schedule": "step", "lr": 0.04, "step_epochs": 1,
                                                       "gamma": 0.5}))
    assert [r["lr"] for r in h.rows] == pytest.approx([0.04, 0.02, 0.01])


def test_constant_schedule_keeps_the_lr(tiny_splits):
    _, h = fit(tiny_splits, small_cfg(optim={"lr": 0.03, "schedule": "none"}))
    assert [r["lr"] for r in h.rows] == pytest.approx([0.03, 0.03])


def test_a_diverging_run_stops_early_and_says_when(tiny_splits):
    _, h = fit(tiny_splits, small_cfg(epochs=4, optim={"lr": 1e6, "schedule": "none", "nesterov": False}))
    assert h.meta["diverged_at_epoch"] == 1
    assert len(h.rows) == 1 and h.rows[0]["diverged"] is True
    assert not math.isfinite(h.rows[0]["train_loss"])


def lr_trace(schedule: str, epochs: int = 4, steps: int = 10, **optim) -> list[float]:
    """The lr each optimizer step uses, stepping the schedule as the trainer does (loss held flat)."""
    o = OptimConfig(schedule=schedule, lr=0.1, **optim)
    opt = create_optimizer(nn.Linear(2, 2), o, torch.device("cpu"))
    sched = create_schedule(opt, o, epochs, steps)
    trace = []
    for _ in range(epochs):
        for _ in range(steps):
            trace.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step_batch()
        sched.step_epoch(1.0)
    return trace


def test_linear_schedule_rises_to_the_peak_then_falls_to_the_final_lr():
    trace = lr_trace("linear", warmup=0.25, final_lr=0.1)  # 40 steps, 10 of warm-up
    peak = int(np.argmax(trace))
    assert peak == 9 and trace[peak] == pytest.approx(0.1)
    assert trace[0] == pytest.approx(0.01)  # (step + 1) / warm-up steps of the peak
    assert all(a < b for a, b in zip(trace[:peak], trace[1:peak + 1]))
    assert all(a >= b for a, b in zip(trace[peak:], trace[peak + 1:]))
    assert trace[-1] == pytest.approx(0.1 * (0.1 + 0.9 / 30))  # one step short of final_lr * peak


def test_onecycle_rises_to_the_peak_then_anneals():
    trace = lr_trace("onecycle", warmup=0.25)
    peak = int(np.argmax(trace))
    assert trace[peak] == pytest.approx(0.1) and 8 <= peak <= 10
    assert trace[0] == pytest.approx(0.1 / 25)  # OneCycleLR's default div_factor
    assert trace[-1] < trace[0]


def test_plateau_cuts_the_lr_after_patience_epochs_without_improvement():
    trace = lr_trace("plateau", epochs=6, steps=1, patience=1, gamma=0.5)
    assert trace[:3] == pytest.approx([0.1, 0.1, 0.1])  # best at epoch 1, one bad epoch tolerated
    assert trace[3] == pytest.approx(0.05)


def test_step_schedule_is_per_epoch():
    trace = lr_trace("step", epochs=3, steps=5, step_epochs=2, gamma=0.1)
    assert trace == pytest.approx([0.1] * 10 + [0.01] * 5)


# ---------------------------------------------------------------------------------------------
# Options


def test_label_smoothing_runs_and_changes_the_loss(tiny_splits):
    _, plain = fit(tiny_splits, small_cfg(epochs=1))
    _, smooth = fit(tiny_splits, small_cfg(epochs=1, reg={"label_smoothing": 0.3}))
    assert math.isfinite(smooth.final["train_loss"])
    assert smooth.final["train_loss"] != plain.final["train_loss"]


def test_ema_is_the_exponential_average_of_the_weights_and_copies_the_buffers():
    from cifarlab.train import _EMA

    decay, model = 0.9, nn.BatchNorm1d(2).double()  # weight, bias; running_mean/var, num_batches_tracked
    w0 = model.weight.detach().clone()
    ema = _EMA(model, decay)
    weights = [torch.tensor([1.0, -2.0], dtype=torch.float64) * t for t in (1, 3, -2, 5)]
    for t, w in enumerate(weights):
        with torch.no_grad():
            model.weight.copy_(w)
            model.running_mean.fill_(float(t))
        ema.update(model)
    # After T updates: decay^T w0 + (1 - decay) sum_t decay^(T-1-t) w_t
    T = len(weights)
    expected = decay ** T * w0 + (1 - decay) * sum(decay ** (T - 1 - t) * w for t, w in enumerate(weights))
    torch.testing.assert_close(ema.model.weight, expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(ema.model.running_mean, torch.full((2,), T - 1.0, dtype=torch.float64))  # the last, not a mean
    assert torch.equal(model.weight, weights[-1])  # the trained model is left alone


def test_training_with_ema_hands_back_the_averaged_weights(tiny_splits, monkeypatch):
    import cifarlab.train
    from cifarlab.train import _EMA

    made = []

    class Recorded(_EMA):
        def __init__(self, *args):
            super().__init__(*args)
            made.append(self)

    monkeypatch.setattr(cifarlab.train, "_EMA", Recorded)
    model, _ = fit(tiny_splits, small_cfg(epochs=1, ema=0.9))
    [ema] = made
    for (name, got), want in zip(model.state_dict().items(), ema.model.state_dict().values()):
        assert torch.equal(got, want), name


class _Mirrored(nn.Module):
    """Flip-invariant to the last bit: a linear classifier's logits for the image and its mirror image, averaged.

    Float addition commutes, so the model's output for the mirror image is the same sum in the other order.
    """

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3 * 32 * 32, 10)

    def forward(self, x):
        return (self.linear(x.flatten(1)) + self.linear(x.flip(3).flatten(1))) / 2


class _LeftMinusRight(nn.Module):
    """Flip-sensitive and fixed: logits (d, -d, 1, -9, ...) for d = mean(left half) - mean(right half)."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(()))  # train() needs something to step; the function stays fixed

    def forward(self, x):
        d = x[..., :16].mean((1, 2, 3)) - x[..., 16:].mean((1, 2, 3))
        rest = [torch.ones_like(d)] + [torch.full_like(d, -9.0)] * 7
        return torch.stack([d, -d, *rest], 1) + 0 * self.unused


def test_flip_tta_of_a_flip_invariant_model_is_its_plain_accuracy(tiny_splits):
    from dataclasses import replace

    from cifarlab.data import Split

    # Noise images: every prediction hangs on pixel detail, so any view but the mirror image would move some.
    gen = torch.Generator().manual_seed(0)
    test = Split(torch.randn(200, 3, 32, 32, generator=gen), torch.randint(0, 10, (200,), generator=gen))
    seed_everything(0)
    h = train(_Mirrored(), replace(tiny_splits, test=test), small_cfg(epochs=2, tta=True), log=None)
    assert [row["test_acc_tta"] for row in h.rows] == [row["test_acc"] for row in h.rows]
    assert "test_acc_tta6" not in h.rows[0] and "test_acc_tta6" in h.final  # 6 views: last epoch only


def test_flip_tta_averages_a_flip_sensitive_model_over_the_mirror_image(tiny_splits):
    from dataclasses import replace

    from cifarlab.data import Split

    # Class 0 images are bright on the left, class 1 on the right: plain logits (+-2, -+2, 1) are right,
    # averaged with the mirror image's they are (0, 0, 1) and say class 2 for every image.
    left = torch.cat([torch.ones(3, 32, 16), -torch.ones(3, 32, 16)], 2)
    test = Split(torch.stack([left, left.flip(2)] * 5), torch.tensor([0, 1] * 5))
    h = train(_LeftMinusRight(), replace(tiny_splits, test=test), small_cfg(epochs=1, tta=True), log=None)
    assert (h.final["test_acc"], h.final["test_acc_tta"]) == (1.0, 0.0)
    _, plain = fit(tiny_splits, small_cfg(epochs=1))
    assert "test_acc_tta" not in plain.final and "test_acc_tta6" not in plain.final


def test_translate_shifts_one_pixel_with_reflected_edges():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    down_right = _translate(x, 1, 1)
    assert torch.equal(down_right[..., 1:, 1:], x[..., :3, :3])  # content moved by one pixel
    assert torch.equal(down_right[..., 0, 1:], x[..., 1, :3])  # top row filled by reflection
    up_left = _translate(x, -1, -1)
    assert torch.equal(up_left[..., :3, :3], x[..., 1:, 1:])
    assert torch.equal(_translate(x, 0, 0), x)


def test_predict_averages_the_logits_of_its_views():
    torch.manual_seed(0)
    model = create_model("s8-net", norm="bn", width=8).eval()
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        views = [model(_translate(x.flip(3) if m else x, dy, dx)) for dy, dx, m in TTA_VIEWS["flip-shift"]]
    assert len(views) == 6
    torch.testing.assert_close(predict(model, x, batch_size=4, tta="flip-shift"), torch.stack(views).mean(0))
    torch.testing.assert_close(predict(model, x, 64, tta=True), (model(x) + model(x.flip(3))).detach() / 2)
    torch.testing.assert_close(predict(model, x, 64), model(x).detach())


@pytest.mark.parametrize("optimizer, lr", [("sgd", 0.05), ("adam", 0.002), ("adamw", 0.002)])
def test_every_optimizer_lowers_the_loss_on_a_fixed_batch(optimizer, lr):
    from torch.nn.functional import cross_entropy as loss

    # Measured: 2.31 -> 1.95 (sgd), 1.97 (adam, adamw) after 10 steps; the bar is 2.08.
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 3, 32, 32, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    seed_everything(0)
    model = create_model("s8-net", **SMALL_S8)
    opt = create_optimizer(model, OptimConfig(**{**PLAIN_OPTIM, "name": optimizer, "lr": lr, "weight_decay": 1e-4}),
                           torch.device("cpu"))
    first = loss(model(x), y).item()
    for _ in range(10):
        opt.zero_grad(set_to_none=True)
        loss(model(x), y).backward()
        opt.step()
    assert loss(model(x), y).item() < 0.9 * first


def test_a_failing_compiler_falls_back_to_eager_training_with_a_warning(tiny_splits, monkeypatch):
    class Broken(nn.Module):  # what torch.compile hands back when, say, Triton finds no C compiler
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            raise RuntimeError("Failed to find C compiler. Please specify via CC environment variable.")

    monkeypatch.setattr(torch, "compile", lambda model, mode=None: Broken(model))
    lines = []
    seed_everything(0)
    h = train(create_model("s8-net", **SMALL_S8), tiny_splits, small_cfg(epochs=1, compile="on"), log=lines.append)
    assert lines[0].startswith("warning: torch.compile failed (RuntimeError: Failed to find C compiler")
    assert h.meta["compiled"] is False and math.isfinite(h.final["train_loss"])
    _, eager = fit(tiny_splits, small_cfg(epochs=1))
    assert h.final["train_loss"] == eager.final["train_loss"]  # the failed attempt left no trace
