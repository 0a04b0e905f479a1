"""Kills, signals and concurrency, with real `python -m cifarlab` processes signalled by pid.

Each test says what survived (finished epochs, the user's files, the other process's runs) and what
did not happen (a worker outliving its study, a run committed behind a new study's back, a run
trained twice). Nothing sleeps for a guessed time: every wait polls for a condition with a
generous deadline, so a slow, shared machine only makes the tests slower.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarlab.data import CLASSES
from cifarlab.safety import pid_alive, replace_problem

REPO = Path(__file__).resolve().parents[1]
DEADLINE = 300.0  # seconds; generous for two shared cores under load
RUN = ("--device", "cpu", "--compile", "off", "--augment", "none", "--batch-size", "32", "-O", "width=8")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """300 training and 50 test images of noise: an epoch of s8-net at width 8 takes well under a second."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("test", 5)):
        for c in CLASSES:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


def env() -> dict[str, str]:
    out = {**os.environ, "CIFARLAB_NO_PROGRESS": "1", "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    out.pop("CIFARLAB_DATA", None)
    return out


def start(*argv, cwd: Path) -> subprocess.Popen:
    """`python -m cifarlab ARGV` in the background, stdout and stderr captured as text."""
    return subprocess.Popen([sys.executable, "-m", "cifarlab", *map(str, argv)], cwd=cwd, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, umask=0o027)


def finish(proc: subprocess.Popen, timeout: float = DEADLINE) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def wait_for(condition, what: str, proc: subprocess.Popen | None = None, timeout: float = DEADLINE):
    """Poll `condition()` until it returns something true; fail if `proc` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the process exited ({proc.returncode}) before {what}:\n{out}\n{err}")
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def epochs_in(folder: Path) -> int:
    """Finished epochs recorded in `folder/history.json` (0 when absent or being written)."""
    try:
        return len(json.loads((folder / "history.json").read_text())["epochs"])
    except (OSError, ValueError, KeyError):
        return 0


def stages(parent: Path, name: str) -> list[Path]:
    return sorted(parent.glob(f".{name}.cifarlab-*"))


def training_stage(parent: Path, name: str) -> Path | None:
    """The staging folder of run `name` once it has finished an epoch."""
    return next((s for s in stages(parent, name) if epochs_in(s) >= 1), None)


def children(pid: int) -> set[int]:
    """Process ids whose parent is `pid` (Linux /proc, else ps)."""
    found = set()
    if Path("/proc").is_dir():
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == pid:
                found.add(int(stat.parent.name))
        return found
    listing = subprocess.run(["ps", "-A", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
    return {int(a) for a, b in (line.split() for line in listing.splitlines()) if int(b) == pid}


def write_spec(path: Path, data: Path, experiments: dict[str, int], name: str = "t") -> Path:
    """A study of s8-net (width 8) experiments, each `{name: epochs}`, on `data`."""
    body = "".join(f'\n[[experiments]]\nname = "{e}"\ntrain = {{ epochs = {n} }}\n' for e, n in experiments.items())
    path.write_text(f"""name = "{name}"
[data]
root = "{data}"
[model]
options = {{ width = 8 }}
[train]
batch_size = 32
augment = "none"
device = "cpu"
compile = "off"
{body}""")
    return path


def store_runs(folder: Path) -> list[tuple[str, int]]:
    if not (folder / "store.sqlite").exists():
        return []
    with sqlite3.connect(f"file:{folder / 'store.sqlite'}?mode=ro", uri=True) as db:
        return sorted(db.execute("SELECT experiment, seed FROM runs").fetchall())


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ---------------------------------------------------------------------------------------------
# `cifarlab train`: SIGTERM and Ctrl-C keep the finished epochs; SIGKILL's leftovers are cleaned


@pytest.mark.parametrize("sig, code, users_folder", [(signal.SIGTERM, 143, False), (signal.SIGINT, 130, True)],
                         ids=["sigterm", "sigint"])
def test_signal_keeps_the_finished_epochs_and_exits_with_its_code(data, tmp_path, sig, code, users_folder):
    out = tmp_path / "run"
    if users_folder:  # a folder of the user's that happens to be called like the kept run: never replaced
        (tmp_path / "run.incomplete").mkdir()
        (tmp_path / "run.incomplete" / "notes.txt").write_text("mine")
    proc = start("train", "--data", data, "--out", out, "--epochs", "1000", *RUN, cwd=tmp_path)
    stage = wait_for(lambda: training_stage(tmp_path, "run"), "the first finished epoch", proc)
    proc.send_signal(sig)
    rc, stdout, stderr = finish(proc)

    assert rc == code
    assert one_line(stderr) == f"cifarlab train: {'terminated (SIGTERM)' if code == 143 else 'interrupted'}"
    kept = tmp_path / ("run.incomplete-2" if users_folder else "run.incomplete")
    assert epochs_in(kept) >= 1 and (kept / "config.json").is_file()
    assert f"kept in {kept}" in stdout
    assert not out.exists() and not stage.exists() and stages(tmp_path, "run") == []
    if users_folder:
        assert (tmp_path / "run.incomplete" / "notes.txt").read_text() == "mine"
    # The kept folder follows the umask (0o027 here), as every folder cifarlab writes.
    assert kept.stat().st_mode & 0o777 == 0o750 and (kept / "history.json").stat().st_mode & 0o777 == 0o640


def test_sigkill_leftovers_are_cleaned_by_the_next_run_into_the_same_folder(data, tmp_path):
    out = tmp_path / "run"
    proc = start("train", "--data", data, "--out", out, "--epochs", "1000", *RUN, cwd=tmp_path)
    stale = wait_for(lambda: training_stage(tmp_path, "run"), "the first finished epoch", proc)
    proc.kill()
    proc.wait()
    assert stale.is_dir() and not out.exists()
    # Next to it: a stage that a live process owns, and the user's own hidden folder named alike.
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        live = tmp_path / f".run.cifarlab-{sleeper.pid}-0123abcd"
        live.mkdir()
        mine = tmp_path / ".run.backup"
        mine.mkdir()
        (mine / "notes.txt").write_text("mine")
        again = start("train", "--data", data, "--out", out, "--epochs", "1", *RUN, cwd=tmp_path)
        rc, stdout, stderr = finish(again)
        assert rc == 0, stderr
        assert epochs_in(out) == 1
        assert not stale.exists()
        assert live.is_dir() and (mine / "notes.txt").read_text() == "mine"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_run_killed_while_replacing_another_leaves_the_old_run_whole(data, tmp_path):
    out = tmp_path / "run"
    first = start("train", "--data", data, "--out", out, "--epochs", "1", "--seed", "0", *RUN, cwd=tmp_path)
    assert finish(first)[0] == 0
    before = (out / "history.json").read_bytes()
    proc = start("train", "--data", data, "--out", out, "--epochs", "1000", "--seed", "1", "--overwrite", *RUN,
                 cwd=tmp_path)
    wait_for(lambda: training_stage(tmp_path, "run"), "the replacement's first epoch", proc)
    proc.kill()
    proc.wait()
    assert (out / "history.json").read_bytes() == before  # the old run stays until the new one is complete
    assert json.loads((out / "config.json").read_text())["train"]["seed"] == 0


# ---------------------------------------------------------------------------------------------
# `cifarlab study`: workers die with it; one study per folder; SIGTERM like Ctrl-C


def test_killed_study_takes_its_workers_with_it_and_commits_nothing_later(data, tmp_path):
    spec = write_spec(tmp_path / "s.toml", data, {"a": 1000, "b": 1000})
    folder = tmp_path / "study"
    proc = start("study", spec, "--out", folder, "--jobs", "2", cwd=tmp_path)
    wait_for(lambda: training_stage(folder / "a", "seed-0") and training_stage(folder / "b", "seed-0"),
             "both workers to finish an epoch", proc)
    workers = children(proc.pid)
    trainers = {int(re.search(r"cifarlab-(\d+)-", s.name)[1]) for s in folder.glob("*/.seed-0.cifarlab-*")}
    assert len(trainers) == 2 and trainers <= workers  # the two stages belong to two of its child processes
    proc.kill()
    proc.wait()
    wait_for(lambda: not any(pid_alive(p) for p in workers), "every worker to end")
    # Nothing they were doing can be committed any more: no run folder, no record.
    assert not list(folder.glob("*/seed-*")) and store_runs(folder) == []
    assert len(list(folder.glob("*/.seed-0.cifarlab-*"))) == 2  # their stages are left, for the next study

    # The next study on the folder (same experiments, now short) clears those and runs everything.
    spec = write_spec(tmp_path / "s.toml", data, {"a": 1, "b": 1})
    rc, stdout, stderr = finish(start("study", spec, "--out", folder, cwd=tmp_path))
    assert rc == 0, stderr
    assert store_runs(folder) == [("a", 0), ("b", 0)]
    assert not list(folder.glob("*/.seed-*"))


def test_two_studies_started_together_train_each_run_once(data, tmp_path):
    spec = write_spec(tmp_path / "s.toml", data, {"a": 3, "b": 3})
    folder = tmp_path / "study"
    procs = [start("study", spec, "--out", folder, cwd=tmp_path) for _ in range(2)]
    results = [finish(p) for p in procs]
    trained = sum(len(re.findall(r"^\[\d+/\d+\] ", out, re.M)) for _, out, _ in results)
    assert trained == 2  # each of the two runs trained exactly once, by one of the two processes
    assert store_runs(folder) == [("a", 0), ("b", 0)]
    for (rc, out, err), other in zip(results, reversed(procs)):
        if rc != 0:  # the one that came second while the first still ran is refused, naming the holder
            assert rc == 2
            line = one_line(err)
            assert str(folder) in line and f"pid {other.pid}" in line
        else:
            assert "Traceback" not in err
    assert any(rc == 0 for rc, _, _ in results)


def test_a_second_study_started_later_is_refused_and_leaves_the_first_alone(data, tmp_path):
    spec = write_spec(tmp_path / "s.toml", data, {"a": 1000, "b": 1})
    folder = tmp_path / "study"
    first = start("study", spec, "--out", folder, cwd=tmp_path)
    stage = wait_for(lambda: training_stage(folder / "a", "seed-0"), "the first study to train", first)
    rc, out, err = finish(start("study", spec, "--out", folder, cwd=tmp_path))
    assert rc == 2
    line = one_line(err)
    assert str(folder) in line and f"pid {first.pid}" in line and "in use" in line
    # The first goes on training in the stage it had: the second neither deleted it nor trained.
    done = epochs_in(stage)
    wait_for(lambda: epochs_in(stage) > done, "the first study to finish another epoch", first)
    assert "[1/" not in out and list((folder / "a").glob(".seed-0.cifarlab-*")) == [stage]
    assert f"in use by another process (pid {first.pid})" in replace_problem(folder)  # nor replaced by a train
    first.terminate()
    rc, out, err = finish(first)
    assert rc == 143 and one_line(err) == "cifarlab study: terminated (SIGTERM)"
    assert epochs_in(folder / "a" / "seed-0.incomplete") > done


@pytest.mark.parametrize("jobs", [1, 2])
def test_sigterm_stops_a_study_like_ctrl_c(data, tmp_path, jobs):
    spec = write_spec(tmp_path / "s.toml", data, {"quick": 1, "slow": 1000})
    folder = tmp_path / "study"
    proc = start("study", spec, "--out", folder, "--jobs", jobs, cwd=tmp_path)
    wait_for(lambda: training_stage(folder / "slow", "seed-0"), "the slow run's first epoch", proc)
    wait_for(lambda: store_runs(folder) == [("quick", 0)], "the quick run to be recorded", proc)
    workers = children(proc.pid)
    proc.terminate()
    rc, out, err = finish(proc)
    assert rc == 143
    assert one_line(err) == "cifarlab study: terminated (SIGTERM)"
    wait_for(lambda: not any(pid_alive(p) for p in workers), "every worker to end")
    assert epochs_in(folder / "slow" / "seed-0.incomplete") >= 1  # the finished epochs are kept
    assert not (folder / "slow" / "seed-0").exists() and store_runs(folder) == [("quick", 0)]
    assert not list(folder.glob("*/.seed-*"))


# ---------------------------------------------------------------------------------------------
# Resuming: a run killed (SIGKILL) or stopped (SIGTERM) after epoch 2 goes on from its checkpoint and
# ends exactly like an uninterrupted run; so does each run of a killed study

RESUME_EPOCHS = 20  # so that the process is surely still training when it is frozen after epoch 2
RESUME_RUN = ("--epochs", RESUME_EPOCHS, "--seed", "3", "--augment", "crop", "-O", "dropout=0.1", "--ema", "0.9",
              "--device", "cpu", "--compile", "off", "--batch-size", "32", "-O", "width=8")
TIMING_COLUMNS = ("seconds", "train_seconds")


def metric_rows(run: Path) -> list[dict]:
    """history.csv of a run folder, every column but the wall-clock ones."""
    with (run / "history.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows, run
    return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rows]


def freeze_after_epoch_2(proc: subprocess.Popen, stage_of) -> dict[Path, int]:
    """Once every stage `stage_of()` lists has 2 finished epochs, SIGSTOP the process and its children (so
    no timing decides where the kill lands); return each stage's finished epochs, all short of the last."""
    stages_now = wait_for(lambda: (s := stage_of()) and all(epochs_in(p) >= 2 for p in s) and s,
                          "epoch 2 of every run in flight", proc)
    pids = [proc.pid, *children(proc.pid)]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    done = {s: epochs_in(s) for s in stages_now}
    assert all(2 <= n < RESUME_EPOCHS for n in done.values()), done
    return done


def kill_frozen(proc: subprocess.Popen, sig: signal.Signals) -> tuple[int, str, str]:
    """Send `sig` to a frozen process, let it and its children run again, and wait for it to end."""
    # The children are listed before the signal: once SIGKILL has taken the parent they belong to init,
    # would not be found, and would stay stopped, holding the pipes that finish() waits on.
    pids = [proc.pid, *children(proc.pid)]
    os.kill(proc.pid, sig)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    return finish(proc)


@pytest.fixture(scope="module")
def uninterrupted_run(data, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("whole")
    rc, out, err = finish(start("train", "--data", data, "--out", folder / "run", *RESUME_RUN, cwd=folder))
    assert rc == 0, err
    return folder / "run"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_a_killed_run_resumed_ends_exactly_like_an_uninterrupted_one(data, tmp_path, uninterrupted_run, sig):
    out = tmp_path / "run"
    argv = ("train", "--data", data, "--out", out, *RESUME_RUN)
    proc = start(*argv, cwd=tmp_path)
    [(stage, done)] = freeze_after_epoch_2(proc, lambda: stages(tmp_path, "run")).items()
    rc, stdout, stderr = kill_frozen(proc, sig)
    assert rc == (-9 if sig == signal.SIGKILL else 143)
    kept = stage if sig == signal.SIGKILL else tmp_path / "run.incomplete"
    assert (kept / "checkpoint.pt").is_file()

    # A resume with another setting is refused, naming it, and the kept epochs stay as they are.
    rc, stdout, stderr = finish(start(*argv, "--resume", "--lr", "0.2", cwd=tmp_path))
    assert one_line(stderr) == (f"cifarlab train: error: cannot resume from '{kept}': it was trained with other "
                                "settings (train.optim.lr: 0.4 -> 0.2); run with those, or pass --overwrite to "
                                "start again") and rc == 2
    assert (kept / "checkpoint.pt").is_file() and not out.exists()

    # The same command again continues (with --resume or without).
    rc, stdout, stderr = finish(start(*argv, *(("--resume",) if sig == signal.SIGTERM else ()), cwd=tmp_path))
    assert rc == 0, stderr
    resumed_after = int(re.search(rf"^resuming after epoch (\d+) of {RESUME_EPOCHS} from '{re.escape(str(kept))}'$",
                                  stdout, re.M)[1])
    assert resumed_after >= done  # nothing finished was lost (the checkpoint is written before history.json)
    assert not re.search(rf"^Epoch [1-{resumed_after}]/", stdout, re.M)  # nor trained twice
    assert metric_rows(out) == metric_rows(uninterrupted_run)
    assert not kept.exists() and stages(tmp_path, "run") == [] and not (out / "checkpoint.pt").exists()


def resume_spec(path: Path, data: Path) -> Path:
    """Two runs of the same settings as RESUME_RUN (experiments a and b), so both can be in flight at once."""
    path.write_text(f"""name = "r"
[data]
root = "{data}"
[model]
options = {{ width = 8, dropout = 0.1 }}
[train]
epochs = {RESUME_EPOCHS}
batch_size = 32
augment = "crop"
ema = 0.9
device = "cpu"
compile = "off"
[[experiments]]
name = "a"
[[experiments]]
name = "b"
train = {{ optim = {{ lr = 0.2 }} }}
""")
    return path


@pytest.fixture(scope="module")
def uninterrupted_study(data, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("whole-study")
    spec = resume_spec(folder / "r.toml", data)
    rc, out, err = finish(start("study", spec, "--out", folder / "study", "--jobs", "1", cwd=folder))
    assert rc == 0, err
    return folder / "study"


@pytest.mark.parametrize("jobs", [1, 2])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_a_killed_study_resumed_loses_only_the_epochs_in_flight(data, tmp_path, uninterrupted_study, sig, jobs):
    spec = resume_spec(tmp_path / "r.toml", data)
    folder = tmp_path / "study"
    proc = start("study", spec, "--out", folder, "--jobs", jobs, cwd=tmp_path)
    in_flight = ["a", "b"][:jobs]  # one job trains a first; two train both at once
    done = freeze_after_epoch_2(proc, lambda: [s for e in in_flight for s in stages(folder / e, "seed-0")][:jobs]
                                if all(stages(folder / e, "seed-0") for e in in_flight) else [])
    workers = children(proc.pid)
    rc, stdout, stderr = kill_frozen(proc, sig)
    assert rc == (-9 if sig == signal.SIGKILL else 143)
    wait_for(lambda: not any(pid_alive(p) for p in workers), "every worker to end")
    assert store_runs(folder) == []

    rc, stdout, stderr = finish(start("study", spec, "--out", folder, "--jobs", jobs, cwd=tmp_path))
    assert rc == 0, stderr
    assert store_runs(folder) == [("a", 0), ("b", 0)]
    for stage, epochs in done.items():
        run = folder / stage.parent.name / "seed-0"
        assert json.loads((run / "history.json").read_text())["meta"]["resumed_after_epoch"] >= epochs
    for e in ("a", "b"):
        assert metric_rows(folder / e / "seed-0") == metric_rows(uninterrupted_study / e / "seed-0")
    assert not list(folder.glob("*/.seed-*")) and not list(folder.glob("*/*.incomplete"))
