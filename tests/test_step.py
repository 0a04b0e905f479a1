"""The training step as one unit (issue 11): same histories as before, same predictions, graph fallbacks."""
from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "data"))
import make_golden  # noqa: E402  (tests/data/make_golden.py: the recorded configurations)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def golden() -> dict:
    """The recorded histories for this CPU's kernel set and torch version (others round differently)."""
    path = make_golden.golden_path()
    if not path.exists():
        pytest.skip(f"no golden histories for CPU kernels '{path.name.split('.')[1]}' (tests/data has AVX2, AVX512 and AVX512-AMX)")
    doc = json.loads(path.read_text())
    recorded = doc["environment"]["torch"]
    if recorded != torch.__version__:
        pytest.skip(f"golden histories were recorded with torch {recorded}, this is {torch.__version__}: "
                    "kernels may round differently")
    return doc


@pytest.fixture(scope="module")
def source():
    return make_golden.generated_cifar()


@pytest.mark.parametrize("name", sorted(make_golden.CONFIGS))
def test_training_reproduces_the_recorded_history_and_predictions_exactly(name, golden, source):
    cfg, _ = make_golden.CONFIGS[name]
    got = make_golden.run_one(cfg, source)
    want = golden["runs"][name]
    assert got["steps_per_epoch"] == want["steps_per_epoch"]
    assert len(got["rows"]) == len(want["rows"])
    for epoch, (g, w) in enumerate(zip(got["rows"], want["rows"]), 1):
        assert g.keys() == w.keys(), f"epoch {epoch}: columns differ"
        diff = {k: (g[k], w[k]) for k in w if g[k] != w[k]}
        assert not diff, f"epoch {epoch}: (got, recorded) {diff}"
    gp, wp = got["predictions"], want["predictions"]
    assert (gp["dtype"], gp["shape"], gp["labels"]) == (wp["dtype"], wp["shape"], wp["labels"])
    probs = np.frombuffer(base64.b64decode(gp["probs_b64"]), dtype="<f2")
    recorded = np.frombuffer(base64.b64decode(wp["probs_b64"]), dtype="<f2")
    assert np.array_equal(probs, recorded), f"{int((probs != recorded).sum())} probabilities differ"


def assert_rows_equal(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for epoch, (g, w) in enumerate(zip(got, want), 1):
        assert {k: g[k] for k in w} == w, f"epoch {epoch}"


# ---------------------------------------------------------------------------------------------
# Warm-up, capture and their fallbacks leave no trace


def train_golden(name: str, source, **train_overrides):
    """Train one recorded configuration (with some settings changed) in-process: (history, log lines)."""
    from dataclasses import replace

    from cifarlab.data import make_splits
    from cifarlab.experiment import build_model
    from cifarlab.train import train

    cfg, _ = make_golden.CONFIGS[name]
    data = make_splits(source, val=cfg.data.val, subset=cfg.data.subset, seed=cfg.data.split_seed)
    lines: list[str] = []
    history = train(build_model(cfg), data, replace(cfg.train, **train_overrides), log=lines.append)
    rows = [{k: v for k, v in r.items() if k not in make_golden.TIMINGS} for r in history.rows]
    return history, rows, [line for line in lines if line.startswith("warning")]


# SGD with momentum + EMA + dropout, and AdamW: the optimiser state and every RNG in play.
WARM = ["s8-gn-altflip-ema-onecycle-dropout", "s8-ln-adamw-plateau-none"]


@pytest.mark.parametrize("name", WARM)
def test_compile_warm_up_steps_are_undone_exactly(name, golden, source, monkeypatch):
    # An identity "compiler" takes the compiled path on CPU: full warm-up steps (forward, backward,
    # optimiser, EMA) and evaluations, then TrainStep.restore.
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: model)
    history, rows, warnings = train_golden(name, source, compile="on")
    assert history.meta["compiled"] is True and not warnings
    assert_rows_equal(rows, golden["runs"][name]["rows"])


def test_asking_for_a_cuda_graph_on_cpu_warns_and_trains_as_before(golden, source):
    name = "budget-bn-whiten-linear"
    history, rows, warnings = train_golden(name, source, cuda_graph="on")
    assert warnings == ["warning: CUDA graph capture failed (RuntimeError: CUDA graphs need a CUDA device); "
                        "training without it"]
    assert history.meta["cuda_graph"] is False
    assert_rows_equal(rows, golden["runs"][name]["rows"])


# SGD (CUDA's fused SGD and Adam take a device lr; CPU's foreach Adam refuses one), with EMA or penalties.
CAPTURE = ["s8-bn-flip-tta-val-step-l1l2", "budget-gn-dirac-ema-tta-altflip"]


@pytest.mark.parametrize("name", CAPTURE)
def test_a_capture_failing_after_device_lr_steps_falls_back_without_a_trace(name, golden, source, monkeypatch):
    from cifarlab.step import TrainStep

    def steps_then_fail(self, x, y, rows, warmup_steps=3):  # what a capture does before an op refuses it
        self.use_device_lr()
        self.start_epoch(rows)
        for _ in range(warmup_steps):
            self(x, y)
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(TrainStep, "capture", steps_then_fail)
    history, rows, warnings = train_golden(name, source, cuda_graph="on")
    assert warnings == ["warning: CUDA graph capture failed (RuntimeError: operation not permitted when stream "
                        "is capturing); training without it"]
    assert history.meta["cuda_graph"] is False
    assert_rows_equal(rows, golden["runs"][name]["rows"])


# ---------------------------------------------------------------------------------------------
# The schedule table


def scheduler_trace(name: str, schedule: str, epochs: int, steps: int, losses: list[float]) -> list[list[dict]]:
    """What a real scheduler sets before every step, stepped as the old loop stepped it."""
    from cifarlab.config import OptimConfig
    from cifarlab.models import create_model
    from cifarlab.optim import create_optimizer, create_schedule
    from cifarlab.step import SCHEDULED

    o = OptimConfig(name=name, schedule=schedule, lr=0.1, step_epochs=1, gamma=0.5, patience=0, norm_lr_scale=3.0)
    opt = create_optimizer(create_model("s8-net", width=8), o, torch.device("cpu"))
    sched = create_schedule(opt, o, epochs, steps)
    trace = []
    for epoch in range(epochs):
        for _ in range(steps):
            trace.append([{k: g[k] for k in SCHEDULED if k in g} for g in opt.param_groups])
            opt.step()
            sched.step_batch()
        sched.step_epoch(losses[epoch])
    return trace


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("schedule", ["none", "step", "onecycle", "plateau", "linear"])
def test_the_step_plan_holds_exactly_what_the_scheduler_would_have_set(optimizer, schedule):
    from cifarlab.config import OptimConfig
    from cifarlab.models import create_model
    from cifarlab.optim import create_optimizer
    from cifarlab.step import StepPlan

    epochs, steps, losses = 4, 5, [1.0, 0.9, 0.95, 0.97]  # plateau (patience 0) cuts after epoch 3
    o = OptimConfig(name=optimizer, schedule=schedule, lr=0.1, step_epochs=1, gamma=0.5, patience=0,
                    norm_lr_scale=3.0)
    plan = StepPlan(create_optimizer(create_model("s8-net", width=8), o, torch.device("cpu")), o, epochs, steps)
    rows = []
    for epoch in range(1, epochs + 1):
        rows += plan.rows(epoch)
        plan.end_epoch(losses[epoch - 1])
    want = scheduler_trace(optimizer, schedule, epochs, steps, losses)
    assert rows == want
    assert (len({row[0]["lr"] for row in rows}) == 1) == (schedule == "none")  # the table does move


def test_a_monitoring_plan_wants_the_loss_before_the_next_epoch():
    from cifarlab.config import OptimConfig
    from cifarlab.step import StepPlan

    o = OptimConfig(schedule="plateau")
    plan = StepPlan(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1), o, 3, 2)
    plan.rows(1)
    with pytest.raises(RuntimeError, match="epoch 2's learning rates depend on a loss not yet reported"):
        plan.rows(2)


# ---------------------------------------------------------------------------------------------
# The learning rate as a device tensor, set inside the step (what a CUDA graph replays)


def tiny_step(schedule: str = "linear", steps: int = 4, epochs: int = 2):
    from cifarlab.config import OptimConfig
    from cifarlab.models import create_model
    from cifarlab.optim import create_optimizer
    from cifarlab.step import StepPlan, TrainStep
    from contextlib import nullcontext

    torch.manual_seed(0)
    model = create_model("s8-net", width=8)
    o = OptimConfig(schedule=schedule, lr=0.1, norm_lr_scale=2.0, warmup=0.5)
    opt = create_optimizer(model, o, torch.device("cpu"))
    plan = StepPlan(opt, o, epochs, steps)
    step = TrainStep(model, model, opt, None, [], 0.0, nullcontext, steps, torch.device("cpu"))
    return step, plan, opt


def test_with_device_learning_rates_each_step_reads_its_own_row_of_the_table():
    step, plan, opt = tiny_step()
    step.use_device_lr()
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8)
    for epoch in (1, 2):
        rows = plan.rows(epoch)
        step.start_epoch(rows)  # uploads the epoch's table, rewinds the step counter
        for i in range(len(rows)):
            step.run(x, y, i)
            seen = [float(g["lr"]) for g in opt.param_groups]
            assert seen == [float(torch.tensor(r["lr"], dtype=torch.float32)) for r in rows[i]], (epoch, i)
    assert len({float(g["lr"]) for g in opt.param_groups}) == 2  # groups keep their own (scaled) lr


def test_device_learning_rates_refuse_a_schedule_that_moves_momentum():
    step, plan, _ = tiny_step("onecycle")
    step.use_device_lr()
    with pytest.raises(RuntimeError, match="moves momentum every step"):
        step.start_epoch(plan.rows(1))


def test_uncapture_hands_back_python_float_learning_rates():
    step, plan, opt = tiny_step()
    step.use_device_lr()
    step.start_epoch(plan.rows(1))
    step.run(torch.randn(8, 3, 32, 32), torch.arange(8), 0)
    step.uncapture()
    assert all(type(g["lr"]) is float for g in opt.param_groups)
    step.start_epoch(plan.rows(1))
    step.run(torch.randn(8, 3, 32, 32), torch.arange(8), 1)
    assert [g["lr"] for g in opt.param_groups] == [r["lr"] for r in plan.rows(1)[1]]


# ---------------------------------------------------------------------------------------------
# CUDA: the captured step against the uncaptured one (skipped without a GPU)

cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                          reason="needs a CUDA GPU: replays the captured training step against the uncaptured one")


@cuda
def test_on_cuda_three_replays_of_the_captured_step_match_three_uncaptured_steps(monkeypatch):
    from cifarlab.config import OptimConfig, RegConfig
    from cifarlab.models import create_model
    from cifarlab.optim import create_optimizer, penalty_terms
    from cifarlab.step import StepPlan, TrainStep
    from cifarlab.train import _EMA, autocast_for

    device = torch.device("cuda")
    # cuDNN's default algorithms on both sides: a training run earlier in the session leaves benchmark mode
    # on, whose picks differ between the eager and the captured calls (it failed after tests/test_stack.py).
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    torch.manual_seed(0)
    model = create_model("budget-net", whiten=True).to(device, memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(64, 3, 32, 32, generator=g).to(device).contiguous(memory_format=torch.channels_last),
                torch.randint(0, 10, (64,), generator=g).to(device)) for _ in range(3)]
    model.init_from_data(batches[0][0])
    o = OptimConfig(lr=0.2, schedule="linear", warmup=0.5)  # the lr moves every step
    opt = create_optimizer(model, o, device)
    plan = StepPlan(opt, o, epochs=1, steps=3)
    # fp32 (TF32 convolutions) on both sides: differences are rounding, not bf16 casts.
    step = TrainStep(model, model, opt, _EMA(model, 0.9), penalty_terms(model, RegConfig(l2_conv=1e-4)), 0.1,
                     autocast_for(device, "fp32"), 3, device)
    start = step.snapshot()

    def three_steps() -> dict:
        step.start_epoch(plan.rows(1))
        for i, (x, y) in enumerate(batches):
            step.run(x, y, i)
        torch.cuda.synchronize()
        out = {f"model.{k}": v.detach().clone() for k, v in model.state_dict().items()}
        out.update({f"ema.{k}": v.detach().clone() for k, v in step.ema.model.state_dict().items()})
        out.update(loss_sum=step.loss_sum.clone(), correct=step.correct.clone())
        return out

    eager = three_steps()
    step.restore(start)
    step.capture(*batches[0], plan.rows(1))
    step.restore(start)
    assert step.graph is not None
    replayed = three_steps()
    assert [float(g["lr"]) for g in opt.param_groups] == pytest.approx([r["lr"] for r in plan.rows(1)[2]], rel=1e-6)
    assert int(replayed["correct"]) == int(eager["correct"])
    for key, want in eager.items():
        if want.is_floating_point():
            torch.testing.assert_close(replayed[key], want, rtol=1e-2, atol=1e-3, msg=key)
        else:
            assert torch.equal(replayed[key], want), key  # BN's num_batches_tracked: 3 on both sides


@cuda
@pytest.mark.parametrize("compile_mode", ["off", "on"])
def test_on_cuda_a_captured_run_trains_like_an_uncaptured_one(compile_mode):
    # Same seed, so the same initial weights, order and augmentation; bf16 autocast on both sides. Measured
    # on CPU for this setting: seeds differ by ~10% in epoch-1 train loss and all reach 98.5-100% test
    # accuracy at epoch 2, so "within 5% and within 1 point" catches a broken graph (no learning, stale
    # learning rate, frozen EMA) but not bf16 rounding.
    from cifarlab.config import OptimConfig, RegConfig, TrainConfig
    from cifarlab.data import make_splits
    from cifarlab.models import create_model
    from cifarlab.train import seed_everything, train

    data = make_splits(make_golden.generated_cifar(n_train=5000, n_test=2000))

    def run(cuda_graph: str, compile_: str):
        cfg = TrainConfig(epochs=2, batch_size=256, seed=0, augment="crop", alt_flip=True, ema=0.9, device="cuda",
                          compile=compile_, cuda_graph=cuda_graph, optim=OptimConfig(lr=0.4, schedule="linear"),
                          reg=RegConfig(l2_conv=1e-5))
        seed_everything(0)
        lines: list[str] = []
        history = train(create_model("budget-net", whiten=True), data, cfg, log=lines.append)
        return history, [line for line in lines if line.startswith("warning")]

    ref, ref_warnings = run("off", "off")
    got, warnings = run("on", compile_mode)
    assert not warnings and not ref_warnings
    assert got.meta["cuda_graph"] is True and ref.meta["cuda_graph"] is False
    assert [r["lr"] for r in got.rows] == [r["lr"] for r in ref.rows]
    for g, r in zip(got.rows, ref.rows):
        assert g["train_loss"] == pytest.approx(r["train_loss"], rel=0.05), g["epoch"]
    assert got.final["test_acc"] == pytest.approx(ref.final["test_acc"], abs=0.01)
    assert got.final["test_acc"] > 0.5  # it learned (chance is 0.1)
    assert got.test_logits.shape == (2000, 10)


@cuda
def test_on_cuda_a_captured_run_resumed_from_its_checkpoint_ends_like_the_uninterrupted_one(tmp_path):
    # The checkpoint is written from the captured step's static buffers; a resumed process captures again
    # after loading it. cuDNN and bf16 are not bit-exact run to run, so "like": the same lr rows, the train
    # loss within 2% per epoch and test accuracy within a point (a stale or zeroed state misses both).
    from cifarlab import resume
    from cifarlab.config import OptimConfig, TrainConfig
    from cifarlab.data import make_splits
    from cifarlab.models import create_model
    from cifarlab.train import seed_everything, train

    data = make_splits(make_golden.generated_cifar(n_train=5000, n_test=2000))
    cfg = TrainConfig(epochs=3, batch_size=256, seed=0, augment="crop", ema=0.9, device="cuda", compile="off",
                      cuda_graph="on", optim=OptimConfig(lr=0.4, schedule="linear"))

    def model():
        seed_everything(0)
        return create_model("budget-net", whiten=True)

    states: list[dict] = []
    whole = train(model(), data, cfg, log=None, checkpoint=states.append)
    path = tmp_path / resume.CHECKPOINT
    resume.save(path, {**states[1], "config": {}})
    continued = train(model(), data, cfg, log=None, resume=resume.load(path))
    assert whole.meta["cuda_graph"] is True and continued.meta["cuda_graph"] is True
    assert continued.meta["resumed_after_epoch"] == 2
    assert [r["lr"] for r in continued.rows] == [r["lr"] for r in whole.rows]
    assert [r["train_loss"] for r in continued.rows[:2]] == [r["train_loss"] for r in whole.rows[:2]]  # restored
    assert continued.rows[2]["train_loss"] == pytest.approx(whole.rows[2]["train_loss"], rel=0.02)
    assert continued.final["test_acc"] == pytest.approx(whole.final["test_acc"], abs=0.01)
    assert continued.final["test_acc"] > 0.5
