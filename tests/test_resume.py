"""Resuming a run: the per-epoch checkpoint, exact continuation, and what a resume refuses.

In-process tests check that a run continued from its checkpoint after epoch k ends exactly where an
uninterrupted run ends, for every setting that carries state across epochs (momentum, EMA, each
schedule, dropout, alternating flips). tests/test_processes.py kills real processes.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_image, save_png

from cifarlab import resume
from cifarlab.config import OptimConfig, RegConfig, RunConfig, TrainConfig, from_dict, setting_changes, to_dict
from cifarlab.data import CLASSES, load_cifar10, make_splits
from cifarlab.errors import ConfigError
from cifarlab.experiment import run_experiment
from cifarlab.models import create_model
from cifarlab.train import seed_everything, train

pytestmark = pytest.mark.usefixtures("single_thread")

TIMINGS = ("seconds", "train_seconds")


def metrics(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows]


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    """200 random training images, 20 validation and 30 test images (each 32x32)."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for split, n in (("train", 22), ("test", 3)):
        for label, c in enumerate(CLASSES):
            for i in range(n):
                save_png(root / split / c / f"{i:03d}.png", random_image(rng, label))
    return make_splits(load_cifar10(root), val=20, seed=0)


def cfg_with(**kw) -> TrainConfig:
    optim = dict(name="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4, schedule="linear")
    optim.update(kw.pop("optim", {}))
    base = dict(epochs=4, batch_size=32, seed=3, augment="crop", device="cpu", compile="off", precision="fp32")
    base.update(kw)
    return TrainConfig(optim=OptimConfig(**optim), reg=RegConfig(label_smoothing=0.1), **base)


def model_for(cfg: TrainConfig, dropout: float = 0.0):
    seed_everything(cfg.seed)
    return create_model("s8-net", width=8, dropout=dropout)


CASES = {
    "sgd-linear": (cfg_with(), 0.0),
    "onecycle-moves-momentum": (cfg_with(optim=dict(schedule="onecycle", nesterov=False)), 0.0),
    "plateau-watches-the-val-loss": (cfg_with(optim=dict(schedule="plateau", patience=0, gamma=0.5)), 0.0),
    "step": (cfg_with(optim=dict(schedule="step", step_epochs=1)), 0.0),
    "adamw-ema-dropout-alt-flip": (cfg_with(optim=dict(name="adamw", lr=0.003, nesterov=False), ema=0.9,
                                            alt_flip=True), 0.2),
    "tta": (cfg_with(tta=True), 0.0),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_run_continued_from_its_checkpoint_ends_exactly_like_an_uninterrupted_one(splits, tmp_path, case):
    cfg, dropout = CASES[case]
    states = []
    whole = train(model_for(cfg, dropout), splits, cfg, log=None, checkpoint=states.append)
    assert [s["epoch"] for s in states] == [1, 2, 3, 4]

    # Through the file, as a resumed process reads it: plain tensors and containers only.
    path = tmp_path / resume.CHECKPOINT
    resume.save(path, {**states[1], "config": {}})
    state = resume.load(path)
    again = model_for(cfg, dropout)  # a new process builds the model afresh from the seed
    seed_everything(99)  # and whatever it drew before does not matter
    torch.rand(7)
    continued = train(again, splits, cfg, log=None, resume=state)

    assert metrics(continued.rows) == metrics(whole.rows)
    assert continued.meta["resumed_after_epoch"] == 2
    assert torch.equal(continued.test_logits, whole.test_logits)
    # Not a trivial pass: the run does learn between epochs 2 and 4.
    assert metrics(whole.rows)[1] != metrics(whole.rows)[3]


def test_resumed_after_its_last_epoch_it_still_hands_back_its_test_logits(splits):
    cfg = cfg_with(epochs=2, ema=0.9)
    states = []
    whole = train(model_for(cfg), splits, cfg, log=None, checkpoint=states.append)
    continued = train(model_for(cfg), splits, cfg, log=None, resume=states[-1])
    assert metrics(continued.rows) == metrics(whole.rows)
    assert torch.equal(continued.test_logits, whole.test_logits)


def test_a_resumed_lr_auto_run_keeps_the_lr_its_range_test_found_and_runs_no_second_test(splits, tmp_path,
                                                                                         monkeypatch):
    import cifarlab.lrfind

    cfg = cfg_with(epochs=3, optim=dict(lr="auto"))
    states = []
    whole = train(model_for(cfg), splits, cfg, log=None, checkpoint=states.append)
    path = tmp_path / resume.CHECKPOINT
    resume.save(path, {**states[0], "config": {}})

    def second_test(*args, **kwargs):
        raise AssertionError("the range test ran again")

    monkeypatch.setattr(cifarlab.lrfind, "auto_lr", second_test)
    continued = train(model_for(cfg), splits, cfg, log=None, resume=resume.load(path))
    assert metrics(continued.rows) == metrics(whole.rows)
    assert continued.lr_find == whole.lr_find and continued.meta["lr_auto"] == whole.meta["lr_auto"]


def test_the_checkpoint_holds_only_tensors_and_plain_containers(splits, tmp_path):
    cfg = cfg_with(epochs=1, ema=0.9, alt_flip=True)
    states = []
    train(model_for(cfg), splits, cfg, log=None, checkpoint=states.append)
    path = tmp_path / "c.pt"
    resume.save(path, {**states[0], "config": {"train": {"epochs": 1}}})
    loaded = torch.load(path, weights_only=True)  # refuses any other object
    assert set(loaded) == set(resume._LAYOUT) | {"config"}
    assert not list(tmp_path.glob("*.tmp"))  # written through a temporary file, then renamed


@pytest.mark.parametrize("damage", ["truncated", "garbage", "other-format", "rows-disagree", "a-pickled-object"])
def test_a_damaged_checkpoint_is_refused_in_one_line(splits, tmp_path, damage):
    cfg = cfg_with(epochs=1)
    states = []
    train(model_for(cfg), splits, cfg, log=None, checkpoint=states.append)
    path = tmp_path / resume.CHECKPOINT
    state = {**states[0], "config": {}}
    if damage == "other-format":
        state["format"] = 99
    if damage == "rows-disagree":
        state["epoch"] = 3
    if damage == "a-pickled-object":
        state["config"] = Path("/")  # an object weights_only will not build
    resume.save(path, state)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:500])
    if damage == "garbage":
        path.write_bytes(b"not a checkpoint" * 40)
    with pytest.raises(ConfigError) as err:
        resume.load(path)
    assert "\n" not in str(err.value) and "checkpoint" in str(err.value)


def test_setting_changes_name_each_setting_with_both_values():
    a = to_dict(RunConfig())
    b = from_dict(RunConfig, {"train": {"optim": {"lr": 0.2}, "epochs": 7}})
    assert setting_changes(a, to_dict(b)) == ["train.epochs: 20 -> 7", "train.optim.lr: 0.4 -> 0.2"]
    assert setting_changes(a, a) == []
    assert setting_changes({"x": {"y": 1}}, {"x": {}}) == ["x.y: 1 -> (unset)"]


# ---------------------------------------------------------------------------------------------
# Run folders: what `--resume` continues from and what it refuses (in-process; tests/test_processes.py
# does the same with real processes killed by signals)


def run_cfg(root: Path, **train_kw) -> RunConfig:
    train_kw = {"epochs": 3, "batch_size": 32, "augment": "none", "device": "cpu", "compile": "off", **train_kw}
    return from_dict(RunConfig, {"data": {"root": str(root)}, "model": {"name": "s8-net", "options": {"width": 8}},
                                 "train": train_kw})


def interrupted_run(root: Path, out: Path, after: int, **train_kw) -> Path:
    """Run into `out` and interrupt it (Ctrl-C) once `after` epochs are saved; return `out.incomplete`."""
    def stop(row):
        if row["epoch"] == after:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_experiment(run_cfg(root, **train_kw), out, log=None, on_epoch=stop)
    return out.with_name(out.name + ".incomplete")


def test_resume_continues_from_the_incomplete_folder_and_leaves_no_checkpoint_behind(tiny_folder, tmp_path):
    kept = interrupted_run(tiny_folder.root, tmp_path / "run", 1)
    assert (kept / resume.CHECKPOINT).is_file()
    lines = []
    history = run_experiment(run_cfg(tiny_folder.root), tmp_path / "run", log=lines.append, resume="yes")
    assert lines[0] == f"resuming after epoch 1 of 3 from '{kept}'"
    assert [r["epoch"] for r in history.rows] == [1, 2, 3] and history.meta["resumed_after_epoch"] == 1
    assert not kept.exists() and not (tmp_path / "run" / resume.CHECKPOINT).exists()
    whole = run_experiment(run_cfg(tiny_folder.root), tmp_path / "whole", log=None)
    assert metrics(json.loads((tmp_path / "run" / "history.json").read_text())["epochs"]) == metrics(whole.rows)


@pytest.mark.parametrize("mode", ["yes", "auto"])  # train --resume; train run again, a study
def test_a_changed_setting_is_refused_naming_it_and_nothing_moves(tiny_folder, tmp_path, mode):
    kept = interrupted_run(tiny_folder.root, tmp_path / "run", 1)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ConfigError) as err:
        run_experiment(run_cfg(tiny_folder.root, optim={"lr": 0.2}), tmp_path / "run", log=None, resume=mode)
    assert str(err.value) == (f"cannot resume from '{kept}': it was trained with other settings "
                              "(train.optim.lr: 0.4 -> 0.2); run with those, or pass --overwrite to start again")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_without_resume_a_run_that_would_lose_kept_epochs_is_refused(tiny_folder, tmp_path):
    kept = interrupted_run(tiny_folder.root, tmp_path / "run", 2)
    with pytest.raises(ConfigError, match=r"holds 2 of 3 epochs of this run: add --resume to continue it"):
        run_experiment(run_cfg(tiny_folder.root), tmp_path / "run", log=None)
    with pytest.raises(ConfigError, match=r"holds 2 epochs of a run with other settings \(train.epochs: 3 -> 5\)"):
        run_experiment(run_cfg(tiny_folder.root, epochs=5), tmp_path / "run", log=None)
    assert (kept / resume.CHECKPOINT).is_file()
    # --overwrite starts afresh, and the interrupted run it replaces goes once the new one is complete.
    history = run_experiment(run_cfg(tiny_folder.root, epochs=1), tmp_path / "run", log=None, overwrite=True)
    assert len(history.rows) == 1 and "resumed_after_epoch" not in history.meta and not kept.exists()


def test_resume_with_nothing_to_continue_starts_afresh(tiny_folder, tmp_path):
    history = run_experiment(run_cfg(tiny_folder.root, epochs=1), tmp_path / "run", log=None, resume="yes")
    assert len(history.rows) == 1 and "resumed_after_epoch" not in history.meta


def test_an_incomplete_folder_without_a_usable_checkpoint_is_named_when_resuming(tiny_folder, tmp_path):
    kept = interrupted_run(tiny_folder.root, tmp_path / "run", 1)
    (kept / resume.CHECKPOINT).write_bytes(b"\0" * 100)
    with pytest.raises(ConfigError, match=r"cannot resume from '.*run.incomplete': its checkpoint is unreadable"):
        run_experiment(run_cfg(tiny_folder.root), tmp_path / "run", log=None, resume="yes")
    (kept / resume.CHECKPOINT).unlink()
    with pytest.raises(ConfigError, match=r"it holds no checkpoint"):
        run_experiment(run_cfg(tiny_folder.root), tmp_path / "run", log=None, resume="yes")


def write_study(path: Path, root: Path, lr: float, epochs: int = 2) -> Path:
    path.write_text(f"""name = "s"
[data]
root = "{root}"
[model]
options = {{ width = 8 }}
[train]
epochs = {epochs}
batch_size = 32
augment = "none"
device = "cpu"
compile = "off"
optim = {{ lr = {lr} }}
[[experiments]]
name = "a"
""")
    return path


def test_a_study_refuses_to_continue_a_stopped_run_with_other_settings_before_training(tiny_folder, tmp_path,
                                                                                      monkeypatch):
    import cifarlab.train as train_mod
    from cifarlab.study import load_spec, run_study

    real_row, calls = train_mod._epoch_row, []

    def row_then_interrupt(*args, **kwargs):  # Ctrl-C during the second epoch
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_row(*args, **kwargs)

    monkeypatch.setattr(train_mod, "_epoch_row", row_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_study(load_spec(write_study(tmp_path / "s.toml", tiny_folder.root, lr=0.1)), out=tmp_path / "study",
                  log=lambda line: None)
    monkeypatch.undo()
    kept = tmp_path / "study" / "a" / "seed-0.incomplete"
    assert (kept / resume.CHECKPOINT).is_file()

    with pytest.raises(ConfigError) as err:
        run_study(load_spec(write_study(tmp_path / "s.toml", tiny_folder.root, lr=0.3)), out=tmp_path / "study",
                  log=lambda line: None)
    assert str(err.value) == (f"experiment 'a' seed 0: cannot resume from '{kept}': it was trained with other "
                              "settings (train.optim.lr: 0.1 -> 0.3); run with those, or use another --out (results "
                              "there were left untouched)")
    assert (kept / resume.CHECKPOINT).is_file() and not (tmp_path / "study" / "a" / "seed-0").exists()
    # With the settings it was stopped with, the study continues it.
    run_study(load_spec(write_study(tmp_path / "s.toml", tiny_folder.root, lr=0.1)), out=tmp_path / "study",
              log=lambda line: None)
    meta = json.loads((tmp_path / "study" / "a" / "seed-0" / "history.json").read_text())["meta"]
    assert meta["resumed_after_epoch"] == 1 and not kept.exists()
