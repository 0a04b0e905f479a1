"""Hostile and careless input: folders cifarlab must not delete, names that would become paths
outside the study, pickles that would run code, damaged study folders, numbers out of range.

Each test says what survived (the user's files, the other runs) and what did not happen (a marker
file a crafted pickle would create, a folder outside the working directory, a traceback).
"""
from __future__ import annotations

import builtins
import json
import os
import pickle
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import CliResult, TINY_TRAIN, write_batches

from cifarlab.config import ModelConfig, RunConfig, TrainConfig, to_dict
from cifarlab.store import RunRecord, Store

REPO = Path(__file__).resolve().parents[1]
RUN = ("--device", "cpu", "--compile", "off", "--augment", "none", "--batch-size", "16", "--epochs", "1",
       "--subset", "40", "-O", "width=8")

pytestmark = pytest.mark.usefixtures("single_thread")


def run_console(*argv, cwd: Path) -> CliResult:
    """`python -m cifarlab ARGV` in a fresh interpreter, importing this checkout's cifarlab."""
    env = {**os.environ, "CIFARLAB_NO_PROGRESS": "1", "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    env.pop("CIFARLAB_DATA", None)
    proc = subprocess.run([sys.executable, "-m", "cifarlab", *map(str, argv)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def one_line_error(result, *needles: str, code: int = 2) -> str:
    assert result.code == code, (result.code, result.out, result.err)
    assert len(result.err_lines) == 1 and "Traceback" not in result.err, result.err
    line = result.err_lines[0]
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` with its bytes (None for folders): what must survive, exactly."""
    return {str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes()) for p in sorted(folder.rglob("*"))}


def users_folder(path: Path) -> Path:
    (path / "notes").mkdir(parents=True)
    (path / "notes" / "thesis.txt").write_text("four years of work")
    return path


# ---------------------------------------------------------------------------------------------
# 1. --overwrite replaces only cifarlab's own folders; --out never holds the cwd, home or a root


def _fake_run(path: Path) -> None:  # looks like a run to a careless check: config.json, no cifarlab version
    path.mkdir()
    (path / "config.json").write_text('{"lr": 0.1}')
    (path / "history.json").write_text("{}")
    (path / "data.csv").write_text("mine")


def _link_to_run(path: Path) -> None:
    users_folder(path.with_name("elsewhere"))
    path.symlink_to(path.with_name("elsewhere"))


def _garbage_store(path: Path) -> None:
    users_folder(path)
    (path / "store.sqlite").write_bytes(b"not a database" * 100)


NOT_OURS = {
    "users-folder": users_folder,
    "file": lambda p: p.write_text("a file of the user's"),
    "config-without-cifarlab-version": _fake_run,
    "symlink": _link_to_run,
    "garbage-store": _garbage_store,
}


@pytest.mark.parametrize("kind", sorted(NOT_OURS))
def test_overwrite_refuses_a_folder_that_is_not_cifarlabs(cli, tiny_folder, tmp_path, kind):
    victim = tmp_path / "victim"
    NOT_OURS[kind](victim)
    before = tree(tmp_path)
    result = cli("train", "--data", tiny_folder.root, "--out", victim, "--overwrite", *RUN)
    one_line_error(result, "victim", "left untouched")
    assert tree(tmp_path) == before  # nothing deleted, nothing staged, nothing added


@pytest.mark.parametrize("out", [".", "..", "sub/..", "/", "HOME", "HOME/..", "PARENT"])
def test_out_that_is_or_holds_the_working_directory_home_or_a_root_is_refused(cli, tiny_folder, tmp_path,
                                                                               monkeypatch, out):
    home, cwd = tmp_path / "home", tmp_path / "home" / "work"
    users_folder(cwd)
    (cwd / "sub").mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    out = out.replace("HOME", str(home)).replace("PARENT", str(tmp_path))
    before = tree(tmp_path)
    for command in (("train", "--data", tiny_folder.root, *RUN, "--overwrite"), ("train", "--data", tiny_folder.root,
                                                                                 *RUN)):
        one_line_error(cli(*command, "--out", out))
    spec = tmp_path / "spec.toml"
    spec.write_text('[[experiments]]\nname = "a"\n')
    before[spec.name] = spec.read_bytes()
    one_line_error(cli("study", spec, "--out", out))
    assert tree(tmp_path) == before


def test_overwrite_replaces_a_cifarlab_run_and_nothing_beside_it(cli, tiny_folder, tmp_path):
    out = tmp_path / "runs" / "r"
    users_folder(tmp_path / "runs" / "r-notes")
    assert cli("train", "--data", tiny_folder.root, "--out", out, *RUN).code == 0
    result = cli("train", "--data", tiny_folder.root, "--out", out, "--seed", "1", "--overwrite", *RUN)
    assert result.code == 0, result.err
    assert json.loads((out / "config.json").read_text())["train"]["seed"] == 1
    assert sorted(p.name for p in out.parent.iterdir()) == ["r", "r-notes"]  # no aside copy, no stage
    assert (tmp_path / "runs" / "r-notes" / "notes" / "thesis.txt").read_text() == "four years of work"


def test_replacing_without_an_atomic_swap_puts_the_old_run_back_after_a_kill(tmp_path, monkeypatch):
    from cifarlab import safety

    old, new = tmp_path / "r", tmp_path / ".r.cifarlab-1-0123abcd"
    for folder, text in ((old, "old"), (new, "new")):
        folder.mkdir()
        (folder / "history.json").write_text(text)
    monkeypatch.setattr(safety, "_exchange", lambda a, b: False)
    safety.swap_into_place(new, old)  # two renames where the OS cannot swap
    assert (old / "history.json").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["r"]

    # Killed between the two renames: the old run sits aside and the next command puts it back.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    old.rename(tmp_path / f".r.cifarlab-{dead.pid}-old")
    assert safety.clear_stale_stages(tmp_path, "r") == []
    assert (old / "history.json").read_text() == "new"


def test_a_study_never_replaces_a_users_folder_where_a_run_would_go(cli, tiny_folder, tmp_path):
    folder = tmp_path / "study"
    users_folder(folder / "a" / "seed-0")
    spec = write_spec(tmp_path / "s.toml", tiny_folder.root)
    before = tree(folder / "a")
    one_line_error(cli("study", spec, "--out", folder), "seed-0", "left untouched")
    assert tree(folder / "a") == before


# ---------------------------------------------------------------------------------------------
# 2. Names that become folders


def write_spec(path: Path, data: Path, name: str = "t", experiment: str = "a", extra: str = "") -> Path:
    path.write_text(f"""name = {json.dumps(name)}
[data]
root = "{data}"
subset = 40
[model]
options = {{ width = 8 }}
{TINY_TRAIN}{extra}
[[experiments]]
name = {json.dumps(experiment)}
""")
    return path


BAD_NAMES = ["../../escape", "/tmp/absolute", "..", ".", "a/b", "a\\b", "a\x00b", "a\x1b[31mb", "x" * 300,
             "store.sqlite", "report.html", "report-files", "REPORT.MD", ".hidden", "run.incomplete", " padded ",
             "right\u202eto-left", "line\u2028break", ""]


@pytest.mark.parametrize("field", ["name", "experiment"])
@pytest.mark.parametrize("bad", BAD_NAMES, ids=[repr(n)[:24] for n in BAD_NAMES])
def test_names_that_would_not_be_one_folder_inside_the_study_are_refused(cli, tmp_path, monkeypatch, field, bad):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    spec = write_spec(tmp_path / "s.toml", tmp_path / "no-data", **{field: bad})
    before = tree(tmp_path)
    line = one_line_error(cli("study", spec))
    assert "s.toml" in line and ("name" in line)
    assert tree(tmp_path) == before  # no runs/ folder, nothing written anywhere


def test_a_name_from_the_spec_files_name_is_checked_too(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / ".hidden.toml"
    spec.write_text('[[experiments]]\nname = "a"\n')
    one_line_error(cli("study", spec), ".hidden", "name")
    assert not (tmp_path / "runs").exists()


def test_a_bad_name_in_a_fresh_interpreter_is_one_line(tmp_path):
    spec = write_spec(tmp_path / "s.toml", tmp_path / "no-data", name="../../escape")
    result = run_console("study", spec, cwd=tmp_path)
    one_line_error(result, "../../escape")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.toml"]


def test_stale_stage_cleanup_removes_only_dead_cifarlab_stages(cli, tiny_folder, tmp_path):
    folder = tmp_path / "study"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        stale = folder / "a" / f".seed-0.cifarlab-{dead.pid}-0123abcd"
        owned = folder / "a" / f".seed-0.cifarlab-{live.pid}-0123abcd"
        keep = [folder / "other" / ".seed-important", folder / "a" / ".seed-0.notes", owned]
        for path in [stale, *keep]:
            path.mkdir(parents=True)
            (path / "notes.txt").write_text("keep")
        users_folder(tmp_path / "outside")
        link = folder / "a" / f".seed-1.cifarlab-{dead.pid}-89abcdef"  # a stale-looking link to the user's folder
        link.symlink_to(tmp_path / "outside")
        result = cli("study", write_spec(tmp_path / "s.toml", tiny_folder.root), "--out", folder)
        assert result.code == 0, result.err
        assert not stale.exists()
        assert all((p / "notes.txt").read_text() == "keep" for p in keep)
        assert link.is_symlink() and (tmp_path / "outside" / "notes" / "thesis.txt").is_file()
    finally:
        live.kill()
        live.wait()


# ---------------------------------------------------------------------------------------------
# 3. Crafted pickles run nothing; labels are checked; the report reads only the data it is given


class Payload:
    """A batch value whose unpickling would create `marker`, by one of several routes."""

    def __init__(self, route: str, marker: Path) -> None:
        self.route, self.marker = route, str(marker)

    def __reduce__(self):
        touch = f"open({self.marker!r}, 'w').close()"
        return {
            "os.system": (os.system, (f"touch '{self.marker}'",)),
            "subprocess": (subprocess.call, (["touch", self.marker],)),
            "exec": (builtins.exec, (touch,)),
            "eval": (builtins.eval, (touch,)),
            "numpy-savetxt": (np.savetxt, (self.marker, [1.0])),
        }[self.route]


ROUTES = ["os.system", "subprocess", "exec", "eval", "numpy-savetxt"]


def crafted_batches(root: Path, route: str, marker: Path, file: str = "data_batch_1") -> Path:
    """Valid tiny batches, except `file`, which carries the payload (and would still look like a batch)."""
    write_batches(root)
    path = root / "cifar-10-batches-py" / file
    with open(path, "rb") as fh:
        batch = pickle.load(fh)  # our own file, written just above
    batch["data" if file != "batches.meta" else "label_names"] = Payload(route, marker)
    path.write_bytes(pickle.dumps(batch, protocol=2))
    return root


@pytest.mark.parametrize("route", ROUTES)
def test_the_crafted_pickles_are_armed(tmp_path, route):
    # What the tests below rely on: loading these files with plain pickle does create the marker.
    marker = tmp_path / "marker"
    crafted_batches(tmp_path / "data", route, marker)
    with open(tmp_path / "data" / "cifar-10-batches-py" / "data_batch_1", "rb") as fh:
        pickle.load(fh)
    assert marker.exists()


@pytest.mark.parametrize("command", ["data", "train", "study"])
@pytest.mark.parametrize("route", ROUTES)
def test_a_crafted_batch_runs_no_code(cli, tmp_path, command, route):
    marker = tmp_path / "marker"
    data = crafted_batches(tmp_path / "data", route, marker, file="batches.meta" if route == "eval" else
                           "data_batch_1")
    args = {"data": ("data", "--data", data),
            "train": ("train", "--data", data, "--out", tmp_path / "run", *RUN),
            "study": ("study", write_spec(tmp_path / "s.toml", data), "--out", tmp_path / "study")}[command]
    one_line_error(cli(*args), "was not loaded")
    assert not marker.exists()
    assert not (tmp_path / "run").exists() and not list((tmp_path / "study").glob("*/seed-*"))


@pytest.mark.parametrize("argv", [("data",), ("train", *RUN), ("study", "SPEC", "--jobs", "2")],
                         ids=["data", "train", "study-jobs-2"])
def test_a_crafted_local_data_folder_runs_no_code_in_a_fresh_interpreter(tmp_path, argv):
    # ./data is picked up without --data: the usual way a received folder gets loaded.
    marker = tmp_path / "marker"
    crafted_batches(tmp_path / "data", "os.system", marker)
    spec = tmp_path / "s.toml"
    spec.write_text(write_spec(spec, tmp_path).read_text().replace(f'root = "{tmp_path}"\n', "")
                    + '[[experiments]]\nname = "b"\n')
    result = run_console(*[str(spec) if a == "SPEC" else a for a in argv], cwd=tmp_path)
    one_line_error(result, "data_batch_1", "was not loaded")
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_batches_as_numpy_and_python_write_them_still_load(tmp_path, protocol):
    from cifarlab.data import load_cifar10

    write_batches(tmp_path)
    for path in (tmp_path / "cifar-10-batches-py").iterdir():
        with open(path, "rb") as fh:
            batch = pickle.load(fh)
        path.write_bytes(pickle.dumps(batch, protocol=protocol))
    ds = load_cifar10(tmp_path)
    assert ds.train_x.shape == (50, 32, 32, 3) and ds.test_y.shape == (10,)


BAD_BATCHES = {
    "99-labels-for-100-images": (lambda b: b.update(labels=b["labels"][:99]), "99 labels for 100 images"),
    "label-10": (lambda b: b["labels"].__setitem__(3, 10), "label 10"),
    "label-minus-1": (lambda b: b["labels"].__setitem__(0, -1), "label -1"),
    "labels-missing": (lambda b: b.pop("labels"), "labels"),
    "text-labels": (lambda b: b.update(labels=["cat"] * 100), "label"),
}


@pytest.mark.parametrize("kind", sorted(BAD_BATCHES))
def test_labels_are_checked_before_any_training(cli, tmp_path, kind):
    breakage, needle = BAD_BATCHES[kind]
    write_batches(tmp_path / "data", per_batch=100)
    path = tmp_path / "data" / "cifar-10-batches-py" / "data_batch_2"
    with open(path, "rb") as fh:
        batch = pickle.load(fh)
    breakage(batch)
    path.write_bytes(pickle.dumps(batch))
    one_line_error(cli("data", "--data", tmp_path / "data"), "data_batch_2", needle)
    one_line_error(cli("train", "--data", tmp_path / "data", "--out", tmp_path / "run", *RUN), needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_a_batch_that_is_not_a_dict_or_names_other_classes_is_refused(cli, tmp_path):
    write_batches(tmp_path / "data")
    meta = tmp_path / "data" / "cifar-10-batches-py" / "batches.meta"
    meta.write_bytes(pickle.dumps({"label_names": ["cat", "dog"]}))
    one_line_error(cli("data", "--data", tmp_path / "data"), "batches.meta", "10 classes")
    meta.write_bytes(pickle.dumps(["label_names"]))
    one_line_error(cli("data", "--data", tmp_path / "data"), "batches.meta", "not a CIFAR-10 batch")


def test_a_crafted_cache_is_never_unpickled_or_trusted(tmp_path):
    from cifarlab.data import CACHE_NAME, _source_signature, load_cifar10

    marker = tmp_path / "marker"
    write_batches(tmp_path / "data")
    source = tmp_path / "data" / "cifar-10-batches-py"
    signature = _source_signature(source)
    with open(source / CACHE_NAME, "wb") as fh:  # the right signature, an object array carrying the payload
        np.savez(fh, train_x=np.array([Payload("os.system", marker)], dtype=object), signature=np.asarray(signature))
    ds = load_cifar10(tmp_path / "data")
    assert not marker.exists() and ds.train_x.shape == (50, 32, 32, 3)
    with open(source / CACHE_NAME, "wb") as fh:  # right signature and shapes, labels out of range
        np.savez(fh, train_x=ds.train_x, train_y=np.full(50, 99), test_x=ds.test_x, test_y=ds.test_y,
                 classes=np.asarray(ds.classes), signature=np.asarray(signature))
    assert load_cifar10(tmp_path / "data").train_y.max() <= 9  # rebuilt from the batches


# ---------------------------------------------------------------------------------------------
# A study folder without training: records written as a study would, for the report tests


def synthetic_study(folder: Path, name: str = "syn", description: str = "",
                    experiments: dict[str, str] | None = None, data_root: str | None = None) -> Path:
    """`base` (2 seeds) and `other` (1 seed): history, config and predictions.npz as a real study writes them."""
    experiments = experiments or {"base": "the baseline", "other": "a variant"}
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    with Store(folder) as store:
        for k, (exp, _) in enumerate(experiments.items()):
            for seed in range(2 if k == 0 else 1):
                cfg = to_dict(RunConfig(model=ModelConfig("s8-net", {"width": 8}), train=TrainConfig(seed=seed)))
                cfg["data"]["root"] = data_root
                history = [{"epoch": e, "train_loss": 2.0 / e, "train_acc": 0.2 + 0.1 * e, "test_loss": 2.1 / e,
                            "test_acc": 0.2 + 0.1 * e + 0.01 * seed + 0.02 * k, "lr": 0.1, "seconds": 1.0,
                            "train_seconds": 0.9} for e in (1, 2)]
                run_dir = f"{exp}/seed-{seed}"
                (folder / run_dir).mkdir(parents=True)
                labels = rng.integers(0, 10, 20)
                np.savez_compressed(folder / run_dir / "predictions.npz", labels=labels.astype(np.int8),
                                    probs=rng.dirichlet(np.ones(10), 20).astype(np.float16))
                store.record(RunRecord(exp, seed, run_dir, "s8-net", 3224, 2, 2.0, 0.0, "cpu", cfg, history))
        store.set_meta(name=name, description=description, experiments=list(experiments), baseline="base",
                       descriptions=experiments, spec=f"name = {json.dumps(name)}\n",
                       budget={"max_params": 50000, "max_epochs": 2}, val=0)
    return folder


def report(cli, folder: Path, *extra) -> tuple[str, str]:
    result = cli("report", folder, "--data", folder.parent / "no-data", *extra)
    assert result.code == 0 and "Traceback" not in result.err, result.err
    return (folder / "report.html").read_text(), (folder / "report.md").read_text()


def test_the_report_reads_test_images_only_from_the_data_it_is_pointed_to(tmp_path):
    marker = tmp_path / "marker"
    crafted = crafted_batches(tmp_path / "received-data", "os.system", marker)
    folder = synthetic_study(tmp_path / "received-study", data_root=str(crafted))  # recorded by the sender
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    result = run_console("report", folder, cwd=cwd)
    assert result.code == 0, result.err
    assert not marker.exists()
    assert "test images could not be loaded" in (folder / "report.html").read_text()
    result = run_console("report", folder, "--data", crafted, cwd=cwd)  # pointed at it: refused, still no code
    assert result.code == 0 and not marker.exists()
    assert "was not loaded" in (folder / "report.html").read_text()


# ---------------------------------------------------------------------------------------------
# 7. The report and damaged files


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _savez(path: Path, **arrays) -> None:
    path.unlink()
    np.savez(path, **arrays)  # stored, not compressed: a flipped byte then fails the CRC check


def _probs(n: int = 20, k: int = 10) -> np.ndarray:
    return np.full((n, k), 1.0 / k, dtype=np.float16)


DAMAGED_PREDICTIONS = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:100]),  # BadZipFile
    "cut-mid-member": lambda p: p.write_bytes(p.read_bytes()[:-40]),  # EOFError / zlib error
    "bad-crc-compressed": _flip_byte,
    "bad-crc-stored": lambda p: (_savez(p, probs=_probs(), labels=np.zeros(20, np.int8)), _flip_byte(p)),
    "garbage": lambda p: p.write_bytes(b"\x00garbage" * 50),
    "empty": lambda p: p.write_bytes(b""),
    "a-folder": lambda p: (p.unlink(), p.mkdir()),
    "missing": lambda p: p.unlink(),
    "no-probs": lambda p: _savez(p, labels=np.zeros(20, np.int8)),
    "wrong-shapes": lambda p: _savez(p, probs=_probs(20, 3), labels=np.zeros(20, np.int8)),
    "labels-mismatch": lambda p: _savez(p, probs=_probs(), labels=np.zeros(7, np.int8)),
    "nan-probs": lambda p: _savez(p, probs=np.full((20, 10), np.nan, np.float16), labels=np.zeros(20, np.int8)),
    "label-out-of-range": lambda p: _savez(p, probs=_probs(), labels=np.full(20, 12, np.int8)),
    "pickled-object-array": lambda p: _savez(p, probs=np.array([Payload("os.system", p.with_name("m"))]),
                                             labels=np.zeros(1, np.int8)),
}


@pytest.mark.parametrize("kind", sorted(DAMAGED_PREDICTIONS))
def test_damaged_predictions_make_that_run_unavailable_and_the_report_goes_on(cli, tmp_path, kind):
    folder = synthetic_study(tmp_path / "study")
    DAMAGED_PREDICTIONS[kind](folder / "other" / "seed-0" / "predictions.npz")
    page, md = report(cli, folder)
    assert "Confusion matrix: unavailable" in page and "`other/seed-0/predictions.npz` is missing or unreadable" in md
    assert page.count("confusion matrix, base") == 1  # the intact experiment keeps its figures
    assert not (folder / "other" / "seed-0" / "m").exists()


def _sql(folder: Path, statement: str, *params) -> None:
    with sqlite3.connect(folder / "store.sqlite") as db:
        db.execute(statement, params)


DAMAGED_ROWS = {
    "config-not-json": ("UPDATE runs SET config = '{not json' WHERE experiment = 'other'", "not valid JSON"),
    "history-not-json": ("UPDATE runs SET history = '[{\"epoch\": 1,' WHERE experiment = 'other'", "not valid JSON"),
    "history-row-without-metrics": ("UPDATE runs SET history = '[{\"epoch\": 1}]' WHERE experiment = 'other'",
                                    "lacks train_acc, test_acc"),
    "history-not-a-list": ("UPDATE runs SET history = '{\"epoch\": 1}' WHERE experiment = 'other'", "not list"),
    "history-text-metric": ("UPDATE runs SET history = '[{\"epoch\": 1, \"train_acc\": \"high\", \"test_acc\": 1}]'"
                            " WHERE experiment = 'other'", "'train_acc'"),
    "config-a-list": ("UPDATE runs SET config = '[1, 2]' WHERE experiment = 'other'", "not dict"),
    "seed-as-text": ("UPDATE runs SET seed = 'zero' WHERE experiment = 'other'", "'seed'"),
    "null-json": ("UPDATE runs SET history = 'null' WHERE experiment = 'other'", "not list"),
    "nested-too-deep": ("UPDATE runs SET config = ? WHERE experiment = 'other'", "not valid JSON"),
    "config-as-blob": ("UPDATE runs SET config = x'00ff' WHERE experiment = 'other'", "not valid JSON"),
}


@pytest.mark.parametrize("kind", sorted(DAMAGED_ROWS))
def test_a_damaged_store_row_is_left_out_with_a_note(cli, tmp_path, kind):
    statement, needle = DAMAGED_ROWS[kind]
    folder = synthetic_study(tmp_path / "study")
    _sql(folder, statement, *(["[" * 100_000] if "?" in statement else []))
    page, md = report(cli, folder)
    assert "Left out, damaged in the study folder" in page and needle.replace("'", "&#x27;") in page
    assert "<strong>base</strong>" in page and "Not in the table (no finished run yet): other" in page


@pytest.mark.parametrize("key, value", [("experiments", "5"), ("descriptions", "[1]"), ("budget", '"big"'),
                                        ("val", '"many"'), ("name", "{not json"), ("baseline", "3")])
def test_damaged_study_facts_are_ignored_with_a_note(cli, tmp_path, key, value):
    folder = synthetic_study(tmp_path / "study")
    _sql(folder, "UPDATE meta SET value = ? WHERE key = ?", value, key)
    page, _ = report(cli, folder)
    assert f"study fact &#x27;{key}&#x27;" in page and "<strong>base</strong>" in page


@pytest.mark.parametrize("damage", ["every-row", "truncated-file", "no-runs-table"])
def test_damage_that_leaves_nothing_to_report_is_one_line(cli, tmp_path, damage):
    folder = synthetic_study(tmp_path / "study")
    store = folder / "store.sqlite"
    if damage == "every-row":
        _sql(folder, "UPDATE runs SET config = 'garbage'")
    elif damage == "truncated-file":
        store.write_bytes(store.read_bytes()[: len(store.read_bytes()) // 2])
    else:
        _sql(folder, "DROP TABLE runs")
    before = store.read_bytes()
    one_line_error(cli("report", folder), str(folder))
    assert store.read_bytes() == before and not (folder / "report.html").exists()


def test_a_study_resumes_over_a_damaged_row_by_training_that_run_again(cli, tiny_folder, tmp_path):
    folder = tmp_path / "study"
    spec = write_spec(tmp_path / "s.toml", tiny_folder.root)
    assert cli("study", spec, "--out", folder).code == 0
    _sql(folder, "UPDATE runs SET history = 'garbage'")
    result = cli("study", spec, "--out", folder)
    assert result.code == 0, result.err
    assert "damaged" in result.out and "1 to run" in result.out
    with Store(folder, create=False) as store:
        assert [len(r.history) for r in store.runs()] == [1]


def test_report_files_that_is_a_link_is_refused_not_emptied(cli, tmp_path):
    folder = synthetic_study(tmp_path / "study")
    users_folder(tmp_path / "pictures")
    (tmp_path / "pictures" / "holiday.png").write_bytes(b"\x89PNG mine")
    (folder / "report-files").symlink_to(tmp_path / "pictures")
    one_line_error(cli("report", folder), "report-files")
    assert (tmp_path / "pictures" / "holiday.png").read_bytes() == b"\x89PNG mine"


# ---------------------------------------------------------------------------------------------
# 8. Numbers: each refused before any data is read; a diverged run exits 3


BAD_NUMBERS = [
    (("--warmup", "nan"), "--warmup", {"optim": {"warmup": float("nan")}}),
    (("--warmup", "1.5"), "--warmup", {"optim": {"warmup": 1.5}}),
    (("--dropout", "2"), "--dropout", None),
    (("--dropout", "nan"), "--dropout", None),
    (("--schedule", "step", "--step-epochs", "0"), "--step-epochs", {"optim": {"schedule": "step", "step_epochs": 0}}),
    (("--weight-decay", "-0.1"), "--weight-decay", {"optim": {"weight_decay": -0.1}}),
    (("--lr", "inf"), "--lr", {"optim": {"lr": float("inf")}}),
    (("--ema", "1"), "--ema", {"ema": 1.0}),
    (("--label-smoothing", "-1"), "--label-smoothing", {"reg": {"label_smoothing": -1}}),
    (("--model", "keras-cnn", "-O", "dropout_conv=2"), "dropout_conv", None),
    (("--model", "keras-cnn", "-O", "dropout_dense=NaN"), "dropout_dense", None),
    (("--model", "keras-cnn", "-O", "dense_units=0"), "dense_units", None),
    (("--model", "budget-net", "-O", "logit_scale=-1"), "logit_scale", None),
    (("-O", "width=0"), "width", None),
]


@pytest.mark.parametrize("flags, needle, table", BAD_NUMBERS, ids=[" ".join(f[0]) for f in BAD_NUMBERS])
def test_a_number_out_of_range_is_one_line_before_any_data_is_read(cli, tmp_path, flags, needle, table):
    nowhere = tmp_path / "no-data"  # an error about the data would mean the number was checked too late
    base = [a for a in RUN if a not in ("-O", "width=8")] if {"-O", "--model"} & set(flags) else list(RUN)
    line = one_line_error(cli("train", "--data", nowhere, "--out", tmp_path / "run", *base, *flags), needle)
    assert "no-data" not in line


def _toml(value) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, float) and value != value:
        return "nan"
    if isinstance(value, float) and value == float("inf"):
        return "inf"
    return json.dumps(value)


SPEC_NUMBERS = [t for _, _, t in BAD_NUMBERS if t] + [{"dropout": 2.0}, {"dropout_conv": float("nan")}]


@pytest.mark.parametrize("table", SPEC_NUMBERS, ids=[json.dumps(t) for t in SPEC_NUMBERS])
def test_a_number_out_of_range_in_a_spec_is_one_line_before_any_data_is_read(cli, tmp_path, table):
    key = "model" if set(table) & {"dropout", "dropout_conv"} else "train"
    entry = f"{key} = {_toml({'options': table} if key == 'model' else table)}"
    if "dropout_conv" in table:
        entry = f'model = {{ name = "keras-cnn", options = {_toml(table)} }}'
    spec = write_spec(tmp_path / "s.toml", tmp_path / "no-data")
    spec.write_text(spec.read_text() + entry + "\n")
    line = one_line_error(cli("study", spec, "--out", tmp_path / "study"), "s.toml", "experiments.a")
    assert "no-data" not in line and not (tmp_path / "study").exists()


def test_a_diverged_run_exits_3_and_keeps_its_folder(cli, tiny_folder, tmp_path):
    out = tmp_path / "run"
    result = cli("train", "--data", tiny_folder.root, "--out", out, *RUN, "--lr", "1e30")
    one_line_error(result, "not finite", str(out), code=3)
    assert (out / "history.json").is_file() and "final test accuracy" in result.out


def test_a_study_with_a_diverged_run_reports_it_and_exits_3(cli, tiny_folder, tmp_path):
    spec = write_spec(tmp_path / "s.toml", tiny_folder.root)
    spec.write_text(spec.read_text() + '[[experiments]]\nname = "hot"\ntrain = { optim = { lr = 1e30 } }\n')
    folder = tmp_path / "study"
    result = cli("study", spec, "--out", folder, "--report")
    one_line_error(result, "hot seed 0", "diverged", code=3)
    assert "hot seed 0: " in result.out and "DIVERGED" in result.out
    assert "Diverged (non-finite loss): hot seed 0" in (folder / "report.html").read_text()
    with Store(folder, create=False) as store:
        assert {r.experiment: r.diverged for r in store.runs()} == {"a": False, "hot": True}


# ---------------------------------------------------------------------------------------------
# 9. report.md escapes what the study says; the cache and a read-only data folder; the umask


def test_report_md_escapes_names_and_descriptions(cli, tmp_path):
    folder = synthetic_study(tmp_path / "study", name="<script>alert(1)", description="<b>bold claim</b> | x",
                             experiments={"base": "<script>alert(2)</script> | a [link](javascript:x)",
                                          "<img src=x onerror=y>": "line one\n# not a heading | `code|span`"})
    page, md = report(cli, folder)
    # Fenced blocks and code spans show their text as is: what Markdown would turn into HTML is the rest.
    rendered = re.sub(r"^(`{3,}).*?^\1$", "", md, flags=re.S | re.M)
    assert rendered.count("```") == 0 and '"<script>alert(1)"' in md  # the spec, whole, inside its fence
    rendered = re.sub(r"`[^`]*`", "", rendered)
    for text in (page, rendered):
        assert "<script" not in text and "<img src=x" not in text and "<b>" not in text
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    table = rows[:3]  # the comparison table: header and two experiments
    counts = {line.replace("\\|", "").count("|") for line in table}
    assert len(counts) == 1, table  # a '|' in a description does not add a column
    assert "\n# not a heading" not in md and "[link](javascript:" not in md


def test_a_read_only_data_folder_without_a_cache_folder_goes_on_without_a_cache(tiny_folder, tmp_path, monkeypatch,
                                                                                capsys):
    from cifarlab import data

    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a-file" / "cache"))  # cannot be created, even by root
    monkeypatch.setattr(data.os, "access", lambda path, mode: False)  # the data folder reads as read-only
    ds = data.load_cifar10(tiny_folder.root)
    assert ds.train_x.shape == (60, 32, 32, 3)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: cannot write the data cache")
    assert not (tiny_folder.root / data.CACHE_NAME).exists()


def test_the_cache_file_follows_the_umask(tiny_folder):
    from cifarlab.data import CACHE_NAME, load_cifar10

    old = os.umask(0o027)
    try:
        load_cifar10(tiny_folder.root)
    finally:
        os.umask(old)
    assert (tiny_folder.root / CACHE_NAME).stat().st_mode & 0o777 == 0o640
