"""Seeing a run work: the progress bar on a terminal, a one-job study's epoch lines, TensorBoard scalars."""
from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from conftest import REPO

from cifarlab.errors import EXIT_BAD_INPUT

pytestmark = pytest.mark.usefixtures("single_thread")

RUN = ("--device", "cpu", "--compile", "off", "--augment", "none", "--batch-size", "16", "-O", "width=8")


def on_a_terminal(argv: list[str], cwd: Path, **env_extra: str) -> str:
    """Run `python -m cifarlab ARGV` with its stdout and stderr on a pseudo-terminal; everything it wrote."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    env.pop("CIFARLAB_NO_PROGRESS", None)  # set for every test by conftest
    env.update(env_extra)
    leader, follower = pty.openpty()
    # A new pseudo-terminal is 0x0 characters, on which tqdm draws nothing: give it a real window's size.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "cifarlab", *argv], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=follower, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the other end closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=300) == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


BAR = re.compile(r"epoch 2/2: +\d+%\|.*\| \d+/3 \[")  # tqdm: "epoch 2/2:  67%|####  | 2/3 [00:00<...]"


def test_on_a_terminal_each_epoch_shows_a_progress_bar(make_folder, tmp_path):
    data = make_folder(n_train=5, n_test=1).root  # 50 images: 3 batches of 16
    argv = ["train", "--data", str(data), "--epochs", "2", *RUN]
    shown = on_a_terminal([*argv, "--out", str(tmp_path / "a")], tmp_path)
    assert BAR.search(shown), shown
    assert "Epoch 2/2 - " in shown
    quiet = on_a_terminal([*argv, "--out", str(tmp_path / "b")], tmp_path, CIFARLAB_NO_PROGRESS="1")
    assert not BAR.search(quiet) and "|" not in quiet and "Epoch 2/2 - " in quiet
    piped = subprocess.run([sys.executable, "-m", "cifarlab", *argv, "--out", str(tmp_path / "c")], cwd=tmp_path,
                           env={**os.environ, "PYTHONPATH": str(REPO / "src")}, capture_output=True, text=True,
                           timeout=300)
    assert piped.returncode == 0 and not BAR.search(piped.stderr + piped.stdout) and "|" not in piped.stderr


def spec(path: Path, data: Path, epochs: int = 2) -> Path:
    path.write_text(f"""name = "s"
[data]
root = "{data}"
[model]
options = {{ width = 8 }}
[train]
epochs = {epochs}
batch_size = 16
augment = "none"
device = "cpu"
compile = "off"
[[experiments]]
name = "bn"
[[experiments]]
name = "ln"
model = {{ options = {{ norm = "ln" }} }}
""")
    return path


def test_a_one_job_study_shows_the_epoch_lines_of_the_run_in_flight(cli, tiny_folder, tmp_path):
    result = cli("study", spec(tmp_path / "s.toml", tiny_folder.root), "--out", tmp_path / "study", "--jobs", "1",
                 "--seeds", "2")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    epochs = [line for line in lines if re.match(r"\[\w+ seed \d\] Epoch", line)]
    assert [line.split(" - ")[0] for line in epochs] == [f"[{e} seed {s}] Epoch {k}/2" for e in ("bn", "ln")
                                                        for s in (0, 1) for k in (1, 2)]
    assert all(re.search(r" - test_acc \d\.\d{4}", line) for line in epochs)
    # Each run's one-line result still follows its epochs.
    assert lines.index("[bn seed 1] " + epochs[3][len("[bn seed 1] "):]) < next(
        i for i, line in enumerate(lines) if line.startswith("[2/4] bn seed 1: "))


def test_a_study_with_several_jobs_keeps_one_line_per_finished_run(cli, tiny_folder, tmp_path):
    result = cli("study", spec(tmp_path / "s.toml", tiny_folder.root), "--out", tmp_path / "study", "--jobs", "2")
    assert result.code == 0, result.err
    assert "Epoch" not in result.out
    assert sorted(re.findall(r"^\[\d/2\] (\w+ seed \d): ", result.out, re.M)) == ["bn seed 0", "ln seed 0"]


# ---------------------------------------------------------------------------------------------
# --tensorboard


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in a TensorBoard run folder, read back with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def expected(history: list[dict]) -> dict[str, list[tuple[int, float]]]:
    from cifarlab.tensorboard_log import TAGS

    return {tag: [(r["epoch"], pytest.approx(r[key], rel=1e-6)) for r in history]
            for key, tag in TAGS.items() if key in history[0]}


def history_of(run: Path) -> list[dict]:
    import json

    return json.loads((run / "history.json").read_text())["epochs"]


@pytest.fixture
def tensorboard():
    return pytest.importorskip("tensorboard", reason="the tensorboard package is not installed "
                                                     "(pip install 'cifarlab[tensorboard]')")


def test_train_writes_each_epochs_losses_accuracies_and_lr_as_scalars(cli, tiny_folder, tmp_path, tensorboard):
    out = tmp_path / "runs" / "mine"
    result = cli("train", "--data", tiny_folder.root, "--out", out, "--epochs", "3", "--val", "10", *RUN,
                 "--tensorboard", tmp_path / "tb")
    assert result.code == 0, result.err
    assert [p.name for p in (tmp_path / "tb").iterdir()] == ["mine"]  # one run per folder, named as --out
    got, want = scalars(tmp_path / "tb" / "mine"), expected(history_of(out))
    assert set(want) == {"loss/train", "loss/val", "loss/test", "accuracy/train", "accuracy/val", "accuracy/test",
                         "learning_rate"}
    assert got == want


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_study_writes_each_run_into_its_own_folder(cli, tiny_folder, tmp_path, tensorboard, jobs):
    folder = tmp_path / "study"
    result = cli("study", spec(tmp_path / "s.toml", tiny_folder.root), "--out", folder, "--jobs", jobs,
                 "--tensorboard", tmp_path / "tb")
    assert result.code == 0, result.err
    runs = sorted(str(p.relative_to(tmp_path / "tb")) for p in (tmp_path / "tb").glob("*/*/*"))
    assert runs == ["study/bn/seed-0", "study/ln/seed-0"]  # under the study folder's name
    for run in runs:
        assert scalars(tmp_path / "tb" / run) == expected(history_of(tmp_path / run))


def test_without_the_tensorboard_package_the_flag_is_one_line_with_the_install_hint(cli, tiny_folder, tmp_path,
                                                                                    monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` now raises ImportError
    out = tmp_path / "run"
    for argv in (("train", "--data", tiny_folder.root, "--out", out, *RUN),
                 ("study", spec(tmp_path / "s.toml", tiny_folder.root), "--out", tmp_path / "study")):
        result = cli(*argv, "--tensorboard", tmp_path / "tb")
        assert result.code == EXIT_BAD_INPUT and len(result.err_lines) == 1, result.err
        assert "pip install 'cifarlab[tensorboard]'" in result.err
    assert not out.exists() and not (tmp_path / "tb").exists() and not (tmp_path / "study").exists()


def test_a_tensorboard_folder_that_cannot_be_made_is_one_line_before_anything_trains(cli, tiny_folder, tmp_path,
                                                                                     tensorboard):
    (tmp_path / "file").write_text("not a folder")
    for argv, name in ((("train", "--data", tiny_folder.root, "--out", tmp_path / "run", *RUN), "run"),
                       (("study", spec(tmp_path / "s.toml", tiny_folder.root), "--out", tmp_path / "study"), "study")):
        result = cli(*argv, "--tensorboard", tmp_path / "file" / "tb")
        assert result.code == EXIT_BAD_INPUT and len(result.err_lines) == 1, result.err
        assert f"--tensorboard: cannot create '{tmp_path / 'file' / 'tb' / name}'" in result.err
        assert "Epoch" not in result.out and not list(tmp_path.glob(f"*{name}*"))
