"""The command line: every bad input is one line on stderr and exit code 2, and leaves no run folder behind."""
from __future__ import annotations

import json
import re

import pytest

from conftest import run_console

FAST = ("--device", "cpu", "--compile", "off", "--augment", "none", "--batch-size", "16", "--epochs", "1",
        "--subset", "40")
SMALL = ("-O", "width=8")  # s8-net at a quarter of its width: same layout, fast on CPU


pytestmark = pytest.mark.usefixtures("single_thread")


def assert_one_line_error(result, *needles: str) -> str:
    """Exit code 2, nothing on stdout, exactly one stderr line starting with 'cifarlab' and naming the problem."""
    assert result.code == 2, (result.code, result.err)
    assert len(result.err_lines) == 1, result.err
    line = result.err_lines[0]
    assert line.startswith("cifarlab") and "Traceback" not in result.err
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def assert_no_run_left(out) -> None:
    """Nothing named like the run: no finished folder, no `.incomplete`, no staging folder."""
    assert not out.exists()
    assert not out.with_name(out.name + ".incomplete").exists()
    if out.parent.exists():
        assert [p.name for p in out.parent.iterdir() if out.name in p.name] == []


def train(cli, data, out, *extra: str, small: bool = True):
    return cli("train", "--data", data, "--out", out, *FAST, *(SMALL if small else ()), *extra)


# ---------------------------------------------------------------------------------------------
# Bad data


def test_missing_data_folder(cli, tmp_path):
    out = tmp_path / "runs" / "r"
    result = train(cli, tmp_path / "nowhere", out)
    assert_one_line_error(result, "nowhere", "does not exist")
    assert_no_run_left(out)


def test_broken_data_folder(cli, broken_folder, tmp_path):
    # Each variant: missing class folder, 32x31 image, RGBA, grayscale, truncated PNG, garbage bytes as PNG.
    folder, names = broken_folder
    out = tmp_path / "runs" / "r"
    assert_one_line_error(train(cli, folder.root, out), names)
    assert_no_run_left(out)


@pytest.mark.parametrize("breakage,needle", [("missing-class", "cat"), ("not-32x32", "001.png"),
                                             ("rgba", "000.png"), ("garbage-png", "004.png")])
def test_data_errors_name_the_class_or_file(cli, make_folder, tmp_path, breakage, needle):
    from conftest import BREAKAGES

    folder = make_folder()
    BREAKAGES[breakage](folder)
    out = tmp_path / "r"
    assert_one_line_error(train(cli, folder.root, out), needle)
    assert_no_run_left(out)


def test_no_data_anywhere_says_where_to_put_it(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("train", "--out", tmp_path / "r", *FAST)
    assert_one_line_error(result, "CIFAR-10 not found", "--data")
    assert_no_run_left(tmp_path / "r")


def test_subset_larger_than_the_data(cli, tiny_folder, tmp_path):
    result = cli("train", "--data", tiny_folder.root, "--out", tmp_path / "r", *FAST, "--subset", "1000")
    assert_one_line_error(result, "--subset 1000")
    assert_no_run_left(tmp_path / "r")


# ---------------------------------------------------------------------------------------------
# Bad configuration


@pytest.mark.parametrize("args,needle", [
    (("--model", "resnet9"), "unknown model 'resnet9'"),
    (("--norm", "instance"), "invalid choice: 'instance'"),
    (("--epochs", "0"), "epochs"),
    (("--epochs", "-3"), "epochs"),
    (("--batch-size", "0"), "--batch-size: must be >= 1, got 0"),
    (("--lr", "0"), "--lr: must be > 0, got 0"),
    (("--optimizer", "rmsprop"), "--optimizer: invalid choice: 'rmsprop'"),
    (("--schedule", "cosine"), "--schedule: invalid choice: 'cosine'"),
    (("--momentum", "0"), "nesterov needs momentum"),
    (("-O", "depth=3"), "no option 'depth'"),
    (("-O", "width=wide"), "option 'width' expects int"),
    (("-O", "width"), "KEY=VALUE"),
    (("--label-smoothing", "1.5"), "--label-smoothing: must be in [0, 1), got 1.5"),
    (("--ema", "1"), "ema"),
    (("--precision", "fp8"), "precision"),
    (("--device", "tpu"), "device"),
    (("--augment", "mixup"), "--augment"),
    (("--max-params", "0"), "--max-params"),
    (("--epochs", "two"), "--epochs"),
    (("--bogus-flag",), "--bogus-flag"),
], ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_bad_option_is_one_line_and_exit_2(cli, tiny_folder, tmp_path, args, needle):
    out = tmp_path / "runs" / "r"
    assert_one_line_error(train(cli, tiny_folder.root, out, *args), needle)
    assert_no_run_left(out)


@pytest.mark.parametrize("model,limit,over", [("s8-net", "47959", "1 over the budget of 47,959"),
                                              ("keras-cnn", "50000", "2,118,362 over the budget of 50,000")])
def test_model_over_max_params(cli, tiny_folder, tmp_path, model, limit, over):
    out = tmp_path / "r"
    line = assert_one_line_error(train(cli, tiny_folder.root, out, "--model", model, "--max-params", limit,
                                       small=False), over)
    assert model in line
    assert_no_run_left(out)


def test_error_in_a_fresh_interpreter_is_one_line_without_traceback(make_folder, tmp_path):
    folder = make_folder()
    (folder.image("train", "bird", 4)).write_bytes(b"\x89PNG garbage" * 10)
    out = tmp_path / "r"
    result = run_console("train", "--data", folder.root, "--out", out, *FAST, *SMALL, cwd=tmp_path)
    assert result.code == 2
    assert len(result.err_lines) == 1 and result.err_lines[0].startswith("cifarlab train: error:"), result.err
    assert "004.png" in result.err and "Traceback" not in result.err
    assert_no_run_left(out)


# ---------------------------------------------------------------------------------------------
# `cifarlab models`


def test_models_lists_every_model_with_its_parameter_count(cli):
    result = cli("models")
    assert result.code == 0 and result.err == ""
    counts = dict(re.findall(r"^(\S+)\s+([\d,]+)\s", result.out, flags=re.M))
    assert counts == {"budget-net": "48,972", "keras-cnn": "2,168,362", "s8-net": "47,960"}
    assert "options: norm=bn" in result.out


# ---------------------------------------------------------------------------------------------
# `cifarlab train`: the happy path and the run folder


RUN_FILES = ["cams.npz", "config.json", "history.csv", "history.json", "layers.json", "model.pt",
             "predictions.npz"]


def test_train_writes_a_complete_run_and_never_overwrites_it_by_accident(cli, tiny_folder, tmp_path):
    out = tmp_path / "runs" / "first"
    result = train(cli, tiny_folder.root, out)
    assert result.code == 0, result.err
    assert sorted(p.name for p in out.iterdir()) == RUN_FILES
    assert [p.name for p in out.parent.iterdir()] == ["first"]  # no staging folder left
    assert "final test accuracy" in result.out and f"results: {out}/" in result.out
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["epochs"] == 1 and config["data"]["subset"] == 40
    assert config["model"] == {"name": "s8-net", "options": {"width": 8}, "source": {}}  # source: file models
    history = json.loads((out / "history.json").read_text())
    assert len(history["epochs"]) == 1 and history["meta"]["train_images"] == 40

    # The same --out again: refused before any work, the finished run untouched.
    before = {name: (out / name).read_bytes() for name in RUN_FILES}
    again = train(cli, tiny_folder.root, out, "--seed", "1")
    assert_one_line_error(again, "already exists", "--overwrite")
    assert {name: (out / name).read_bytes() for name in RUN_FILES} == before
    assert [p.name for p in out.parent.iterdir()] == ["first"]
    # ...and before the data is looked at (a first data load can take a minute).
    assert_one_line_error(train(cli, tmp_path / "no-data-here", out), "already exists")

    # --overwrite replaces it with the new run.
    replaced = train(cli, tiny_folder.root, out, "--seed", "1", "--overwrite")
    assert replaced.code == 0, replaced.err
    assert sorted(p.name for p in out.iterdir()) == RUN_FILES
    assert json.loads((out / "config.json").read_text())["train"]["seed"] == 1
    assert [p.name for p in out.parent.iterdir()] == ["first"]


def test_budget_net_tricks_reach_the_run_config(cli, tiny_folder, tmp_path):
    out = tmp_path / "tricks"
    result = train(cli, tiny_folder.root, out, "--model", "budget-net", "-O", "pool=late", "-O", "dirac=true",
                   "--augment", "flip", "--alt-flip", "--norm-lr-scale", "4", small=False)
    assert result.code == 0, result.err
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["options"] == {"pool": "late", "dirac": True}
    assert config["train"]["alt_flip"] is True and config["train"]["optim"]["norm_lr_scale"] == 4.0


def test_a_bad_option_with_overwrite_keeps_the_existing_run(cli, tiny_folder, tmp_path):
    out = tmp_path / "keep"
    assert train(cli, tiny_folder.root, out).code == 0
    before = (out / "history.json").read_bytes()
    assert_one_line_error(train(cli, tiny_folder.root, out, "--overwrite", "--epochs", "0"), "epochs")
    assert (out / "history.json").read_bytes() == before
