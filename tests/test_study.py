"""Study specs, the runner and resume: every spec error names the file and key, before any training."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarlab.cli import main
from cifarlab.errors import BudgetError, ConfigError
from cifarlab.store import Store, StoreError
from cifarlab.study import load_spec, run_study

REPO = Path(__file__).resolve().parent.parent
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """A small random image folder: 30 train and 8 test images per class."""
    root = tmp_path_factory.mktemp("tiny-cifar")
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("test", 8)):
        for c in CLASSES:
            folder = root / split / c
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def write_spec(path: Path, data: Path, body: str = "", epochs: int = 1, extra_top: str = "") -> Path:
    path.write_text(f"""
name = "t"
{extra_top or "seeds = 1"}
[budget]
max_params = 50000
max_epochs = 20

[data]
root = "{data}"

[model]
name = "s8-net"
options = {{ width = 8 }}

[train]
epochs = {epochs}
batch_size = 32
augment = "none"

[[experiments]]
name = "bn"
baseline = true
{body}
""")
    return path


def test_shipped_specs_parse_and_fit_their_budgets():
    from cifarlab.study import check_models

    names = {}
    for spec_path in sorted((REPO / "studies").glob("*.toml")):
        spec = load_spec(spec_path)
        params = check_models(spec)
        names[spec.name] = [e.name for e in spec.experiments]
        if spec.max_params is not None:
            assert max(params.values()) <= spec.max_params
        assert all(e.config.train.epochs <= (spec.max_epochs or 10**9) for e in spec.experiments)
    assert names["normalization"] == ["bn", "gn", "ln"]
    assert names["keras-cifar10"] == ["baseline", "dropout", "batchnorm", "l2", "dropout-l2-bn",
                                      "extra-block", "wide"]
    assert "smoke" in names and "budget" in names


def test_the_cpu_demo_compares_augmentation_alone():
    """`make demo` on a CPU: its finding is about augmentation, so that is all its experiments differ in."""
    from cifarlab.config import setting_changes, to_dict

    spec = load_spec(REPO / "studies" / "augmentation-cpu.toml")
    none, crop = (to_dict(e.config) for e in spec.experiments)
    assert setting_changes(none, crop) == ['train.augment: "none" -> "crop"']
    assert spec.seeds >= 2 and spec.baseline == "none"


def test_experiment_overrides_merge_key_by_key(tmp_path, tiny_data):
    spec = load_spec(write_spec(tmp_path / "s.toml", tiny_data, """
[[experiments]]
name = "gn"
model = { options = { norm = "gn" } }
train = { optim = { lr = 0.1 } }
"""))
    bn, gn = spec.experiments
    assert gn.config.model.options == {"width": 8, "norm": "gn"}  # width kept from the defaults
    assert gn.config.train.optim.lr == 0.1 and bn.config.train.optim.lr == 0.4
    assert gn.config.train.batch_size == 32 and spec.baseline == "bn"


@pytest.mark.parametrize("body, extra_top, needle", [
    ("colour = 1", "", "experiments[0].colour: unknown key"),
    ("", "colour = 1", "colour: unknown key"),
    ("train = { epochs = 30 }", "", "experiments.bn.train.epochs: 30 epochs exceed the budget of 20"),
    ("train = { epochs = 0 }", "", "experiments.bn.train.epochs: must be >= 1, got 0"),
    ("train = { batch_size = \"big\" }", "", "experiments.bn.train.batch_size: expected int"),
    ("train = { optim = { lr = \"fast\" } }", "", "experiments.bn.train.optim.lr: expected a number or 'auto'"),
    ("train = { optim = { momentun = 0.9 } }", "", "experiments.bn.train.optim.momentun: unknown key"),
    ("model = { name = \"resnet-9000\" }", "", "unknown model 'resnet-9000'"),
    ("model = { options = { norm = \"xn\" } }", "", "experiments.bn.model.options.norm: unknown value 'xn'"),
    ("model = { options = { depth = 3 } }", "", "has no option 'depth'"),
    ("model = { options = { width = 64 } }", "", "over the budget of 50,000"),
    ("", "seeds = 0", "seeds: must be >= 1"),
    ("train = { optim = { schedule = \"cosine\" } }", "", "experiments.bn.train.optim.schedule: unknown value 'cosine'"),
    ("train = { optim = { name = \"lion\" } }", "", "experiments.bn.train.optim.name: unknown value 'lion'"),
])
def test_spec_errors_name_file_and_key_before_training(tmp_path, tiny_data, capsys, body, extra_top, needle):
    spec_path = write_spec(tmp_path / "bad.toml", tiny_data, body, extra_top=extra_top)
    out = tmp_path / "out"
    assert main(["study", str(spec_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert needle in err and str(spec_path) in err
    assert not (out / "store.sqlite").exists() and not (out / "bn").exists()  # nothing trained or written


def test_spec_error_message_is_one_line_naming_file_and_key(tmp_path, tiny_data, capsys):
    spec_path = write_spec(tmp_path / "bad.toml", tiny_data, "train = { epochs = 30 }")
    assert main(["study", str(spec_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert str(spec_path) in err[0] and "experiments.bn.train.epochs" in err[0] and "budget of 20" in err[0]


@pytest.mark.parametrize("text, needle", [
    ("name = ", "not valid TOML"),
    ("name = \"x\"\n", "lists no experiments"),
    ("[[experiments]]\nname = \"a\"\n[[experiments]]\nname = \"a\"\n", "'a' appears twice"),
    ("[[experiments]]\ndescription = \"no name\"\n", "experiments[0].name: missing"),
    ("[budget]\nmax_parms = 5\n[[experiments]]\nname = \"a\"\n", "budget.max_parms: unknown key"),
])
def test_malformed_specs(tmp_path, text, needle):
    path = tmp_path / "m.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("]", r"\]")) as info:
        load_spec(path)
    assert str(path) in str(info.value)


def test_missing_spec_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_spec(tmp_path / "nope.toml")


def test_budget_violation_is_a_budget_error(tmp_path, tiny_data):
    spec = load_spec(write_spec(tmp_path / "s.toml", tiny_data, "model = { options = { width = 64 } }"))
    with pytest.raises(BudgetError, match="over the budget"):
        run_study(spec, out=tmp_path / "out", log=lambda s: None)


def test_study_runs_records_and_skips_finished_runs(tmp_path, tiny_data):
    spec = load_spec(write_spec(tmp_path / "s.toml", tiny_data, """
[[experiments]]
name = "ln"
model = { options = { norm = "ln" } }
"""))
    out = tmp_path / "study"
    lines: list[str] = []
    run_study(spec, out=out, seeds=2, log=lines.append)
    with Store(out) as store:
        runs = store.runs()
        meta = store.meta()
    assert sorted((r.experiment, r.seed) for r in runs) == [("bn", 0), ("bn", 1), ("ln", 0), ("ln", 1)]
    assert meta["experiments"] == ["bn", "ln"] and meta["baseline"] == "bn"
    for r in runs:
        assert (out / r.run_dir / "history.json").is_file() and (out / r.run_dir / "predictions.npz").is_file()
        assert r.config["train"]["seed"] == r.seed and 0.0 <= r.test_acc <= 1.0 and len(r.history) == 1
    assert runs[0].test_acc != runs[1].test_acc or runs[0].train_acc != runs[1].train_acc  # seeds differ
    # Rerun: nothing trained, nothing changed.
    before = {(r.experiment, r.seed): (r.test_acc, r.history) for r in runs}
    mtimes = {r.run_dir: (out / r.run_dir / "model.pt").stat().st_mtime_ns for r in runs}
    lines.clear()
    run_study(spec, out=out, seeds=2, log=lines.append)
    assert "4 already finished, 0 to run" in lines[0]
    with Store(out) as store:
        after = {(r.experiment, r.seed): (r.test_acc, r.history) for r in store.runs()}
    assert after == before
    assert {d: (out / d / "model.pt").stat().st_mtime_ns for d in mtimes} == mtimes


def test_changed_experiment_config_is_refused_not_mixed(tmp_path, tiny_data):
    out = tmp_path / "study"
    run_study(load_spec(write_spec(tmp_path / "a.toml", tiny_data)), out=out, log=lambda s: None)
    changed = load_spec(write_spec(tmp_path / "b.toml", tiny_data, "train = { optim = { lr = 0.1 } }"))
    with pytest.raises(ConfigError, match="different configuration"):
        run_study(changed, out=out, log=lambda s: None)


def test_runs_recorded_before_a_setting_existed_still_count_as_finished(tmp_path, tiny_data):
    # A store written by an older cifarlab has no entry for options added since (here alt_flip and
    # norm_lr_scale); their defaults reproduce the old runs, so a rerun must not call them changed.
    out = tmp_path / "study"
    spec = load_spec(write_spec(tmp_path / "a.toml", tiny_data))
    run_study(spec, out=out, log=lambda s: None)
    with sqlite3.connect(out / "store.sqlite") as db:
        for exp, seed, text in db.execute("SELECT experiment, seed, config FROM runs").fetchall():
            cfg = json.loads(text)
            del cfg["train"]["alt_flip"], cfg["train"]["optim"]["norm_lr_scale"]
            db.execute("UPDATE runs SET config = ? WHERE experiment = ? AND seed = ?", (json.dumps(cfg), exp, seed))
    lines = []
    run_study(spec, out=out, log=lines.append)
    assert "already finished, 0 to run" in lines[0]


def test_killed_study_resumes_without_retraining_finished_runs(tmp_path, tiny_data):
    # First experiment is quick; the second is long enough to be killed while it trains.
    spec_path = write_spec(tmp_path / "s.toml", tiny_data, """
[[experiments]]
name = "slow"
train = { epochs = 20 }
""")
    out = tmp_path / "study"
    env = {**os.environ, "CIFARLAB_NO_PROGRESS": "1", "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "cifarlab", "study", str(spec_path), "--out", str(out)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    finished = 0
    while time.time() < deadline and proc.poll() is None:
        if (out / "store.sqlite").exists():
            try:
                with sqlite3.connect(f"file:{out / 'store.sqlite'}?mode=ro", uri=True) as db:
                    finished = db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
            except sqlite3.OperationalError:
                finished = 0
            if finished >= 1:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert finished == 1, "the study should have been killed after its first run"
    with Store(out) as store:
        (first,) = store.runs()
    assert first.experiment == "bn"
    weights = out / first.run_dir / "model.pt"
    stamp = weights.stat().st_mtime_ns

    lines: list[str] = []
    run_study(load_spec(spec_path), out=out, log=lines.append)
    assert "1 already finished, 1 to run" in lines[0]
    with Store(out) as store:
        runs = {r.experiment: r for r in store.runs()}
    assert set(runs) == {"bn", "slow"} and len(runs["slow"].history) == 20
    assert runs["bn"].test_acc == first.test_acc and runs["bn"].history == first.history
    assert weights.stat().st_mtime_ns == stamp  # the finished run was not trained again
    assert not list(out.glob("*/.seed-*"))  # the killed run's staging folder is gone


def test_corrupt_store_is_reported_and_left_untouched(tmp_path, tiny_data, capsys):
    out = tmp_path / "study"
    out.mkdir()
    garbage = b"this is not sqlite" * 100
    (out / "store.sqlite").write_bytes(garbage)
    spec_path = write_spec(tmp_path / "s.toml", tiny_data)
    assert main(["study", str(spec_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "store.sqlite" in err[0] and "untouched" in err[0]
    assert (out / "store.sqlite").read_bytes() == garbage
    with pytest.raises(StoreError):
        Store(out, create=False)


def test_study_with_two_jobs_records_every_run(tmp_path, tiny_data):
    spec = load_spec(write_spec(tmp_path / "s.toml", tiny_data, """
[[experiments]]
name = "gn"
model = { options = { norm = "gn" } }
"""))
    out = tmp_path / "study"
    run_study(spec, out=out, jobs=2, log=lambda s: None)
    with Store(out) as store:
        assert sorted(r.experiment for r in store.runs()) == ["bn", "gn"]


def test_runs_in_one_process_share_one_copy_of_the_data_and_never_write_into_it(tmp_path, tiny_data):
    import torch

    from cifarlab.study import _run_one, _study_data, with_seed

    # crop + flip augmentation and alternating flips: the paths that could write into the images
    spec = load_spec(write_spec(tmp_path / "s.toml", tiny_data, 'train = { augment = "crop", alt_flip = true }'))
    cfg = with_seed(spec.experiments[0].config, 0)
    data = _study_data(cfg)
    before = data.train.x.clone(), data.test.x.clone()
    first = _run_one("bn", 0, cfg, tmp_path / "a")
    assert _study_data(cfg) is data
    assert torch.equal(data.train.x, before[0]) and torch.equal(data.test.x, before[1])
    second = _run_one("bn", 0, cfg, tmp_path / "b")  # same seed, same shared copy: the same run again
    assert [r["train_loss"] for r in second.history] == [r["train_loss"] for r in first.history]
    assert second.test_acc == first.test_acc


def test_pool_workers_keep_one_gpu_each_and_leave_explicit_devices_alone(monkeypatch):
    import queue

    import torch

    from cifarlab import study
    from cifarlab.train import resolve_device

    # setenv first, so that monkeypatch records the variable and takes away what _init_worker sets below
    # (delenv of an absent variable records nothing: the worker's device leaked into later tests).
    monkeypatch.setenv("CIFARLAB_DEVICE", "cpu")
    monkeypatch.delenv("CIFARLAB_DEVICE")
    assert resolve_device("auto") == torch.device("cpu")  # in-process runs on this CPU machine
    devices = queue.Queue()
    for name in ("meta", "cpu"):  # stand-ins for cuda:1, cuda:0 on a machine with two GPUs
        devices.put(name)
    study._init_worker(devices)  # what a fresh pool worker does once
    assert resolve_device("auto") == torch.device("meta")  # every task of that worker
    assert resolve_device("auto") == torch.device("meta")
    assert resolve_device("cpu") == torch.device("cpu")  # an explicit device is left alone


def test_jobs_auto_is_one_process_on_a_cpu_and_cuda_jobs_per_gpu(monkeypatch):
    from cifarlab import study

    monkeypatch.setattr(study, "_gpu_count", lambda: 0)
    assert study.auto_jobs(15) == 1
    monkeypatch.setattr(study, "_gpu_count", lambda: 2)
    assert study.auto_jobs(15) == 2 * study.CUDA_JOBS and study.auto_jobs(3) == 3
    spec = load_spec(REPO / "bench" / "jobs.toml")  # what `bench/gpu.sh jobs` runs to measure CUDA_JOBS
    assert spec.seeds == 8 and spec.experiments[0].config.model.name == "budget-net"


def test_jobs_flag_takes_auto_or_a_positive_number(capsys):
    for bad in ("0", "many"):
        with pytest.raises(SystemExit) as info:
            main(["study", "nope.toml", "--jobs", bad])
        assert info.value.code == 2 and "argument --jobs" in capsys.readouterr().err
    assert main(["study", "nope.toml", "--jobs", "auto"]) == 2  # parsed; the missing spec is the error
    assert "nope.toml' does not exist" in capsys.readouterr().err
