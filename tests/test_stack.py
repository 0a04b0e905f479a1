"""Seeds together (issue 28): K seeds trained as one vmapped computation are each the run trained alone.

The equivalence tests run in float64. In float32 the comparison says little: a CPU run alone already
differs from itself in float64 by up to 2e-4 (relative) in the early layers' gradients (BN's backward on
this CPU), and training amplifies any rounding difference chaotically (two runs alone on 1 and 2 threads
disagree in the second decimal of their test loss after one epoch at lr 0.4). In float64 the stacked
computation matches each seed alone to about 1e-13 in the weights: the same data order, augmentation,
initialisation, norm statistics, EMA, penalty and optimiser state, through the same loop.
"""
from __future__ import annotations

import math
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from cifarlab.config import ModelConfig, OptimConfig, RegConfig, TrainConfig
from cifarlab.data import Split, load_cifar10, make_splits
from cifarlab.models import model_from_config
from cifarlab.stack import Stack
from cifarlab.train import Seed, seed_everything, train, train_seeds

REPO = Path(__file__).resolve().parents[1]
TIMINGS = ("seconds", "train_seconds")
SEEDS = (0, 1, 2)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture
def splits(make_folder):
    """200 generated training images, 20 validation and 30 test images, normalised."""
    return make_splits(load_cifar10(make_folder(n_train=22, n_test=3).root), val=20, seed=0)


def as_double(data):
    double = lambda s: Split(s.x.double(), s.y)  # noqa: E731
    return replace(data, train=double(data.train), val=double(data.val), test=double(data.test))


# A model of the user's own, from a file, as `cifarlab train --model net.py:Net` takes it.
FILE_MODEL = """
from torch import nn

class Net(nn.Module):
    def __init__(self, width: int = 8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.MaxPool2d(2), nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(2 * width, 10)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))
"""

# model, its options, settings beyond the base ones: BN (with the data-initialised whitening stem), GN
# with EMA and alternating flips, LN with AdamW, a built-in net with an L2 penalty, and a file's model.
CASES = {
    "budget-bn-whiten": ("budget-net", {"norm": "bn", "whiten": True, "w1": 8, "w2": 8, "w3": 8}, {}),
    "budget-gn-ema-altflip": ("budget-net", {"norm": "gn", "dirac": True, "pool": "late", "w1": 8, "w2": 8, "w3": 8},
                              {"ema": 0.9, "alt_flip": True}),
    "budget-ln-adamw": ("budget-net", {"norm": "ln", "w1": 8, "w2": 8, "w3": 8},
                        {"optim": {"name": "adamw", "lr": 0.003}}),
    "s8-bn-l2": ("s8-net", {"width": 8, "dropout": 0.0}, {"reg": {"l2_conv": 1e-3}}),
    "file-bn": ("FILE", {}, {"ema": 0.5}),
}


def config(seed: int, **over) -> TrainConfig:
    """2 epochs at batch 32 with crop + flip, Nesterov SGD on a linear schedule, smoothing, decay, flip TTA."""
    optim = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
             "schedule": "linear", "warmup": 0.3, **over.pop("optim", {})}
    reg = {"label_smoothing": 0.1, **over.pop("reg", {})}
    base = dict(epochs=2, batch_size=32, seed=seed, augment="crop", tta=True, device="cpu", compile="off",
                precision="fp32")
    return TrainConfig(optim=OptimConfig(**optim), reg=RegConfig(**reg), **{**base, **over})


def model_config(case: str, tmp_path: Path) -> ModelConfig:
    name, options, _ = CASES[case]
    if name == "FILE":
        (tmp_path / "net.py").write_text(FILE_MODEL)
        from cifarlab.models.external import resolve

        return resolve(ModelConfig(name=f"{tmp_path / 'net.py'}:Net"))
    return ModelConfig(name=name, options=options)


def build(model_cfg: ModelConfig, seed: int):
    seed_everything(seed)  # as experiment.build_model initialises a run's model
    return model_from_config(model_cfg)


def rows(history) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in history.rows]


def assert_same_run(alone, together, model_alone, model_together, rtol=1e-5, atol=1e-9) -> None:
    """Same history (the metrics are float32 reductions of float64 logits), weights, buffers, test logits."""
    ra, rt = rows(alone), rows(together)
    assert len(ra) == len(rt) and [r.keys() for r in ra] == [r.keys() for r in rt]
    for epoch, (a, t) in enumerate(zip(ra, rt), 1):
        for key in a:
            assert t[key] == pytest.approx(a[key], rel=rtol, abs=1e-7), f"epoch {epoch} {key}"
    sa, st = model_alone.state_dict(), model_together.state_dict()
    assert sa.keys() == st.keys()
    for key in sa:  # BN running statistics and counters included
        assert torch.allclose(st[key].double(), sa[key].double(), rtol=0, atol=atol), key
    assert torch.allclose(together.test_logits, alone.test_logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize("case", sorted(CASES))
def test_seeds_trained_together_are_each_the_seed_trained_alone(case, splits, tmp_path, float64):
    data = as_double(splits)
    model_cfg = model_config(case, tmp_path)
    over = CASES[case][2]
    alone, alone_states = [], []
    for seed in SEEDS:
        states: list[dict] = []
        model = build(model_cfg, seed)
        alone.append((model, train(model, data, config(seed, **over), log=None, checkpoint=states.append)))
        alone_states.append(states[-1])
    models = [build(model_cfg, seed) for seed in SEEDS]
    together_states: list[list[dict]] = [[] for _ in SEEDS]
    lines: list[str] = []
    histories = train_seeds([Seed(m, config(seed, **over), log=None, checkpoint=together_states[i].append)
                             for i, (seed, m) in enumerate(zip(SEEDS, models))], data, log=lines.append)
    assert lines == []  # no fallback: this was the stacked computation
    assert all(h.meta["seeds_together"] == len(SEEDS) for h in histories)
    for (model_a, hist_a), model_t, hist_t in zip(alone, models, histories):
        assert_same_run(hist_a, hist_t, model_a, model_t)
    assert rows(histories[0]) != rows(histories[1])  # and the seeds are different runs
    # Each seed's checkpoint is the one its run alone writes: the optimiser state sliced out of the stack.
    for a, t in zip(alone_states, (s[-1] for s in together_states)):
        assert a["optimizer"]["param_groups"] == t["optimizer"]["param_groups"]
        assert a["optimizer"]["state"].keys() == t["optimizer"]["state"].keys()
        for i, state in a["optimizer"]["state"].items():
            for key, value in state.items():
                assert torch.allclose(t["optimizer"]["state"][i][key].double(), value.double(), atol=1e-9), key
        assert torch.equal(a["generator"], t["generator"])


def test_seeds_together_go_on_from_their_checkpoints_as_if_never_stopped(splits, tmp_path, float64):
    data = as_double(splits)
    model_cfg = ModelConfig(name="budget-net", options={"norm": "bn", "w1": 8, "w2": 8, "w3": 8})
    over = {"epochs": 3, "ema": 0.9, "optim": {"name": "adam", "lr": 0.003}}
    models = [build(model_cfg, seed) for seed in SEEDS]
    states: list[list[dict]] = [[] for _ in SEEDS]
    straight = train_seeds([Seed(m, config(s, **over), log=None, checkpoint=states[i].append)
                            for i, (s, m) in enumerate(zip(SEEDS, models))], data, log=None)
    # Killed after epoch 1: fresh models, each seed's epoch-1 checkpoint.
    again = [build(model_cfg, seed) for seed in SEEDS]
    resumed = train_seeds([Seed(m, config(s, **over), log=None, resume=states[i][0])
                           for i, (s, m) in enumerate(zip(SEEDS, again))], data, log=None)
    for h_s, h_r, m_s, m_r in zip(straight, resumed, models, again):
        assert h_r.meta["resumed_after_epoch"] == 1
        assert_same_run(h_s, h_r, m_s, m_r, atol=1e-12)
    # A seed checkpointed together goes on alone too (its checkpoint is an ordinary one).
    alone = build(model_cfg, 1)
    h_alone = train(alone, data, config(1, **over), log=None, resume=states[1][0])
    assert_same_run(straight[1], h_alone, models[1], alone, atol=1e-9)


def test_seeds_at_different_epochs_are_not_stacked(splits):
    models = [build(ModelConfig(name="s8-net", options={"width": 8, "dropout": 0.0}), s) for s in (0, 1)]
    states: list[dict] = []
    train(models[0], splits, config(0, epochs=1), log=None, checkpoint=states.append)
    with pytest.raises(ValueError, match="one epoch"):
        train_seeds([Seed(models[0], config(0), resume=states[0]), Seed(models[1], config(1))], splits)


def test_a_stack_is_one_module_whose_slices_are_the_models_own_tensors():
    models = [build(ModelConfig(name="s8-net", options={"width": 8}), s) for s in SEEDS]
    stack = Stack(models)
    first = dict(stack.module.named_parameters())["C1.0.weight"]
    assert first.shape[0] == len(SEEDS)
    with torch.no_grad():
        first.add_(1.0)  # an update of the stack is an update of each model: no copies
        buffer = dict(stack.module.named_buffers())["C1.2.running_mean"]
        buffer.fill_(3.0)
    for k, m in enumerate(models):
        assert torch.equal(m.C1[0].weight, first[k]) and m.C1[0].weight.data_ptr() == first[k].data_ptr()
        assert torch.equal(m.C1[2].running_mean, torch.full_like(m.C1[2].running_mean, 3.0))
    x = torch.randn(len(SEEDS), 4, 3, 32, 32)
    out = stack.net(x)
    for k, m in enumerate(models):
        with torch.no_grad():
            m.train()
            assert torch.allclose(out[k], m(x[k]), atol=1e-5)


def test_dropout_masks_differ_between_seeds_and_repeat_with_the_same_seeds(splits):
    model_cfg = ModelConfig(name="s8-net", options={"width": 8, "dropout": 0.2})

    def together():
        models = [build(model_cfg, s) for s in SEEDS]
        return [rows(h) for h in train_seeds([Seed(m, config(s), log=None) for s, m in zip(SEEDS, models)],
                                             splits, log=None)]

    first, second = together(), together()
    assert first == second
    assert first[0] != first[1] != first[2]
    assert all(math.isfinite(r["train_loss"]) for seed in first for r in seed)


# A forward vmap cannot batch: it reads a value on the host.
HOST_READ_MODEL = """
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        y = self.conv(x).mean((2, 3))
        if float(y.detach().abs().max()) > 1e6:  # a guard learners write
            y = y / 1e6
        return self.head(y)
"""

# A model whose seed 1 starts with a huge head: its loss is not finite from the first step on.
DIVERGING_SEED_MODEL = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Linear(8, 10)
        if torch.initial_seed() == 1:
            with torch.no_grad():
                self.head.weight.fill_(1e38)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))
"""


def file_model(tmp_path: Path, text: str) -> ModelConfig:
    from cifarlab.models.external import resolve

    path = tmp_path / f"m{abs(hash(text)) % 10**6}.py"
    path.write_text(text)
    return resolve(ModelConfig(name=f"{path}:Net"))


def test_a_model_vmap_cannot_batch_trains_its_seeds_one_at_a_time_and_says_so_in_one_line(splits, tmp_path):
    model_cfg = file_model(tmp_path, HOST_READ_MODEL)
    alone = []
    for s in SEEDS:
        model = build(model_cfg, s)
        alone.append(rows(train(model, splits, config(s), log=None)))
    lines: list[str] = []
    histories = train_seeds([Seed(build(model_cfg, s), config(s), log=None) for s in SEEDS], splits,
                            log=lines.append)
    assert len(lines) == 1 and lines[0].startswith("seeds together: off (the model's forward cannot be batched")
    assert "one at a time" in lines[0]
    assert [rows(h) for h in histories] == alone  # exactly the runs alone
    assert all("seeds_together" not in h.meta for h in histories)


@pytest.mark.parametrize("over, needle", [({"optim": {"lr": "auto"}}, "lr auto"),
                                          ({"optim": {"schedule": "plateau"}}, "plateau")])
def test_settings_that_split_the_seeds_train_them_one_at_a_time_and_say_why(over, needle, splits):
    from cifarlab.train import together_problem

    assert needle in together_problem(config(0, **over))
    assert together_problem(config(0)) is None


def test_a_diverged_seed_stops_alone_and_the_others_train_on(splits, tmp_path):
    model_cfg = file_model(tmp_path, DIVERGING_SEED_MODEL)
    done: list[int] = []
    over = {"epochs": 3}
    histories = train_seeds([Seed(build(model_cfg, s), config(s, **over), log=None,
                                  on_done=lambda h, s=s: done.append(s)) for s in SEEDS], splits, log=None)
    assert histories[1].meta["diverged_at_epoch"] == 1 and len(histories[1].rows) == 1
    assert done[0] == 1  # its run was completed first, while the others still trained
    for s in (0, 2):
        assert len(histories[s].rows) == 3 and "diverged_at_epoch" not in histories[s].meta
        assert all(math.isfinite(r["train_loss"]) for r in histories[s].rows)
        alone = train(build(model_cfg, s), splits, config(s, **over), log=None)
        assert rows(alone)[0]["test_acc"] == pytest.approx(rows(histories[s])[0]["test_acc"], abs=0.05)


# ---------------------------------------------------------------------------------------------
# In a study


def write_spec(path: Path, data: Path, epochs: int = 2, top: str = "", train: str = "", batch: int = 32) -> Path:
    path.write_text(f"""
name = "t"
seeds = 3
{top}
[data]
root = "{data}"

[model]
name = "s8-net"
options = {{ width = 8, dropout = 0.0 }}

[train]
epochs = {epochs}
batch_size = {batch}
augment = "crop"
device = "cpu"
{train}

[[experiments]]
name = "bn"
baseline = true

[[experiments]]
name = "gn"
model = {{ options = {{ norm = "gn" }} }}
""")
    return path


def together_of(folder: Path) -> dict:
    import json

    return {(e, s): json.loads((folder / e / f"seed-{s}" / "history.json").read_text())["meta"].get("seeds_together")
            for e in ("bn", "gn") for s in SEEDS}


def test_a_study_trains_each_experiments_seeds_together_when_asked(make_folder, tmp_path):
    from cifarlab.store import Store
    from cifarlab.study import load_spec, run_study

    data = make_folder(n_train=8, n_test=2).root
    spec = load_spec(write_spec(tmp_path / "s.toml", data))
    lines: list[str] = []
    run_study(spec, out=tmp_path / "on", seeds_together="on", log=lines.append)
    assert lines[0].endswith("(1 worker; each experiment's seeds together)")
    assert set(together_of(tmp_path / "on").values()) == {3}
    with Store(tmp_path / "on") as store:
        assert sorted((r.experiment, r.seed) for r in store.runs()) == [(e, s) for e in ("bn", "gn") for s in SEEDS]
    # auto is off on a CPU (vmap is slower there than one seed after another), and so is off.
    for mode in ("auto", "off"):
        run_study(spec, out=tmp_path / mode, seeds_together=mode, log=lambda s: None)
        assert set(together_of(tmp_path / mode).values()) == {None}
    # The spec may ask for it too; the flag (None: not given) leaves the spec's choice.
    spec_on = load_spec(write_spec(tmp_path / "on.toml", data, top='seeds_together = "on"'))
    run_study(spec_on, out=tmp_path / "spec", log=lambda s: None)
    assert set(together_of(tmp_path / "spec").values()) == {3}


def test_a_study_says_in_one_line_which_experiments_train_their_seeds_one_at_a_time(make_folder, tmp_path):
    from cifarlab.study import load_spec, run_study

    data = make_folder(n_train=8, n_test=2).root
    spec = load_spec(write_spec(tmp_path / "s.toml", data, epochs=1, train='optim = { schedule = "plateau" }'))
    lines: list[str] = []
    run_study(spec, out=tmp_path / "st", seeds_together="on", log=lines.append)
    said = [line for line in lines if line.startswith("seeds together")]
    assert said == [f"seeds together: off for experiment '{e}' (the plateau schedule lowers each seed's learning "
                    "rate after its own loss); its seeds train one at a time" for e in ("bn", "gn")]
    assert set(together_of(tmp_path / "st").values()) == {None}


def test_run_study_refuses_an_unknown_seeds_together(make_folder, tmp_path):
    from cifarlab.errors import ConfigError
    from cifarlab.study import load_spec, run_study

    spec = load_spec(write_spec(tmp_path / "s.toml", make_folder().root))
    with pytest.raises(ConfigError, match="auto, on or off, got 'yes'"):
        run_study(spec, out=tmp_path / "x", seeds_together="yes", log=lambda s: None)
    assert not (tmp_path / "x").exists()


def test_the_study_command_takes_seeds_together(capsys):
    from cifarlab.cli import main

    with pytest.raises(SystemExit):
        main(["study", "x.toml", "--seeds-together", "sometimes"])
    assert "invalid choice: 'sometimes'" in capsys.readouterr().err


def _checkpoint_epochs(out: Path) -> dict[tuple[str, int], int]:
    """(experiment, seed) -> the epoch of the checkpoint a killed study left in that run's stage."""
    found = {}
    for path in out.glob("*/.seed-*/checkpoint.pt"):
        seed = int(path.parent.name.split(".")[1].split("-")[1])
        try:
            found[(path.parent.parent.name, seed)] = torch.load(path, weights_only=True)["epoch"]
        except Exception:  # noqa: BLE001 - being replaced right now
            pass
    return found


def _study(args: list[str]) -> subprocess.Popen:
    import os

    env = {**os.environ, "CIFARLAB_NO_PROGRESS": "1", "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "cifarlab", "study", *args, "--seeds-together", "on"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_killed_study_of_seeds_together_resumes_each_seed_where_it_stopped(make_folder, tmp_path):
    from cifarlab.store import Store

    data = make_folder(n_train=40, n_test=2).root
    spec = write_spec(tmp_path / "s.toml", data, epochs=4, batch=16)
    straight = _study([str(spec), "--out", str(tmp_path / "straight")])
    killed = _study([str(spec), "--out", str(tmp_path / "killed")])
    deadline = time.time() + 240
    epochs: dict = {}
    while time.time() < deadline and killed.poll() is None:
        epochs = _checkpoint_epochs(tmp_path / "killed")
        # Killed in the first experiment's epoch 3, every one of its seeds checkpointed after epoch 2.
        if len(epochs) == 3 and set(epochs.values()) == {2}:
            killed.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    killed.wait()
    assert epochs and set(epochs.values()) == {2}, f"not killed at an epoch boundary: {epochs}"
    with sqlite3.connect(tmp_path / "killed" / "store.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0
    resumed = _study([str(spec), "--out", str(tmp_path / "killed")])
    out, _ = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, out
    assert out.count("resuming after epoch 2 of 4") == 3
    assert straight.wait(timeout=240) == 0
    with Store(tmp_path / "straight") as a, Store(tmp_path / "killed") as b:
        want = {(r.experiment, r.seed): r.history for r in a.runs()}
        got = {(r.experiment, r.seed): r.history for r in b.runs()}
    assert want.keys() == got.keys() and len(want) == 6
    for key in want:  # the same computation in the same kind of process: the same numbers
        assert [{k: v for k, v in r.items() if k not in TIMINGS} for r in got[key]] == \
               [{k: v for k, v in r.items() if k not in TIMINGS} for r in want[key]], key
    assert not list((tmp_path / "killed").glob("*/.seed-*"))


# ---------------------------------------------------------------------------------------------
# On a GPU: the stacked step captured as one CUDA graph (what `--seeds-together auto` runs there)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the stacked step captured")


def _cuda_config(seed: int, epochs: int = 2) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=256, seed=seed, augment="crop", alt_flip=True, ema=0.9,
                       device="cuda", compile="off", cuda_graph="on", optim=OptimConfig(lr=0.4, schedule="linear"),
                       reg=RegConfig(l2_conv=1e-5))


def _generated(n_train: int = 5000, n_test: int = 2000):
    sys.path.insert(0, str(REPO / "tests" / "data"))
    import make_golden

    return make_splits(make_golden.generated_cifar(n_train=n_train, n_test=n_test))


@cuda
@pytest.mark.parametrize("name, options", [("budget-net", {"norm": "bn", "whiten": True}),
                                           ("budget-net", {"norm": "gn", "dirac": True, "pool": "late"})])
def test_on_cuda_seeds_together_train_like_each_seed_alone(name, options):
    # With CUDA each seed keeps its own captured step, replayed on its own stream beside the others': the
    # same kernels as alone, but cuDNN's algorithms and atomics are not bit-exact run to run, so "like" as
    # tests/test_step.py has it for the captured step: the same lr rows, each epoch's train loss within 5%,
    # test accuracy within 1.5 points (a stream racing its inputs, a stale lr table or a frozen EMA misses).
    data = _generated()
    model_cfg = ModelConfig(name=name, options=options)
    alone = [train(build(model_cfg, s), data, _cuda_config(s), log=None) for s in SEEDS]
    lines: list[str] = []
    together = train_seeds([Seed(build(model_cfg, s), _cuda_config(s), log=lines.append) for s in SEEDS], data,
                           log=lines.append)
    assert not [line for line in lines if line.startswith(("warning", "seeds together"))], lines
    for a, t in zip(alone, together):
        assert t.meta["cuda_graph"] is True and t.meta["seeds_together"] == len(SEEDS)
        assert [r["lr"] for r in t.rows] == [r["lr"] for r in a.rows]
        for g, r in zip(t.rows, a.rows):
            assert g["train_loss"] == pytest.approx(r["train_loss"], rel=0.05), g["epoch"]
        assert t.final["test_acc"] == pytest.approx(a.final["test_acc"], abs=0.015)
        assert t.final["test_acc"] > 0.2 and t.test_logits.shape == (2000, 10)  # it learned (chance: 0.1)


@cuda
def test_on_cuda_seeds_together_resumed_from_their_checkpoints_end_like_the_uninterrupted_ones():
    # The checkpoints come from the captured stack's state; the resumed process captures again after loading
    # each seed into its slice. As in tests/test_step.py: restored rows equal, the next within 2%.
    data = _generated()
    model_cfg = ModelConfig(name="budget-net", options={"norm": "bn", "whiten": True})
    states: list[list[dict]] = [[] for _ in SEEDS]
    whole = train_seeds([Seed(build(model_cfg, s), _cuda_config(s, 3), log=None, checkpoint=states[i].append)
                         for i, s in enumerate(SEEDS)], data, log=None)
    continued = train_seeds([Seed(build(model_cfg, s), _cuda_config(s, 3), log=None, resume=states[i][1])
                             for i, s in enumerate(SEEDS)], data, log=None)
    for w, c in zip(whole, continued):
        assert c.meta["resumed_after_epoch"] == 2 and c.meta["cuda_graph"] is True
        assert [r["train_loss"] for r in c.rows[:2]] == [r["train_loss"] for r in w.rows[:2]]
        assert c.rows[2]["train_loss"] == pytest.approx(w.rows[2]["train_loss"], rel=0.02)
        assert c.final["test_acc"] == pytest.approx(w.final["test_acc"], abs=0.01)
