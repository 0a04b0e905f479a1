"""The config dataclasses are the one source of every setting: flags, help, spec keys and ranges follow them."""
from __future__ import annotations

import dataclasses
import json
import math
import sqlite3
import types
import typing

import pytest

from cifarlab.cli import build_parser
from cifarlab.cli.common import run_config
from cifarlab.config import (CommonModelOptions, ModelConfig, OptimConfig, RunConfig, SettingError, folder_name_problem,
                             from_dict, leaves, to_dict)
from cifarlab.errors import ConfigError

FLAGGED = [(path, f, tp) for path, f, tp in leaves(RunConfig) if path[0] != "model"]


def parse(*argv: str) -> RunConfig:
    return run_config(build_parser().parse_args(["train", *argv]))


def flag_of(path, f) -> str:
    return f.metadata.get("flag") or "--" + path[-1].replace("_", "-")


def other_value(f: dataclasses.Field, tp) -> object:
    """A valid value different from the field's default, from its type and bounds alone."""
    optional = typing.get_origin(tp) in (typing.Union, types.UnionType)
    base = next(a for a in typing.get_args(tp) if a is not type(None)) if optional else tp
    if typing.get_origin(base) is typing.Literal:
        return next(c for c in typing.get_args(base) if c != f.default)
    if base is bool:
        return not f.default
    if base is str:
        return {"device": "cpu"}.get(f.name, "somewhere")
    lo = next((f.metadata[k] for k in ("ge", "gt") if f.metadata.get(k) is not None), 0)
    hi = next((f.metadata[k] for k in ("le", "lt") if f.metadata.get(k) is not None), None)
    if base is int:
        return (f.default or lo) + 1
    candidates = [(lo + hi) / 2, (lo + hi) / 4] if hi is not None else [(f.default or 0.0) * 2 + 0.5]
    return next(c for c in candidates if c != f.default)


def test_no_flags_give_the_config_defaults():
    assert parse() == RunConfig()


@pytest.mark.parametrize("path,f,tp", FLAGGED, ids=lambda v: ".".join(v) if isinstance(v, tuple) else "")
def test_each_flag_reaches_its_setting(path, f, tp):
    value = other_value(f, tp)
    if isinstance(value, bool):
        argv = [flag_of(path, f) if value else "--no-" + flag_of(path, f)[2:]]
    else:
        argv = [flag_of(path, f), str(value)]
    if path == ("train", "alt_flip"):
        argv += ["--augment", "flip"]
    node = parse(*argv)
    for key in path:
        node = getattr(node, key)
    assert node == value


def test_help_states_each_default_once_and_every_setting_has_help(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "-h"])
    text = " ".join(capsys.readouterr().out.split())
    for path, f, _ in FLAGGED:
        assert f.metadata.get("help"), path
        assert flag_of(path, f) in text
    assert "--epochs N epochs to train (default: 20; >= 1)" in text
    assert "--batch-size N training batch size (default: 256; >= 1)" in text
    assert "--seed N run seed (model init, data order, augmentation) (default: 0; >= 0)" in text
    assert "default: 0.1" in text and "--label-smoothing" in text
    assert text.count("(default: s8-net)") == 1


BOUNDED = [(path, f, tp) for path, f, tp in leaves(RunConfig)
           if any(f.metadata.get(k) is not None for k in ("ge", "gt", "le", "lt"))]


@pytest.mark.parametrize("path,f,tp", BOUNDED, ids=lambda v: ".".join(v) if isinstance(v, tuple) else "")
def test_every_bound_is_enforced_with_the_key_named(path, f, tp):
    meta = f.metadata
    is_int = int in typing.get_args(tp) or tp is int
    step = 1 if is_int else 1e-9
    bad = [meta["ge"] - step] if meta.get("ge") is not None else []
    bad += [meta["gt"]] if meta.get("gt") is not None else []
    bad += [meta["le"] + step] if meta.get("le") is not None else []
    bad += [meta["lt"]] if meta.get("lt") is not None else []
    if not is_int:
        bad.append(math.nan)
    for value in bad:
        tree: dict = {}
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
        if path == ("train", "optim", "momentum"):
            node["nesterov"] = False  # nesterov needs momentum > 0, a rule of its own
        with pytest.raises(SettingError) as info:
            from_dict(RunConfig, tree, "experiments.x")
        assert info.value.key == "experiments.x." + ".".join(path), (value, str(info.value))


@pytest.mark.parametrize("argv,needle", [
    (("--lr", "nan"), "--lr: must be a finite number, got nan"),
    (("--warmup", "1.5"), "--warmup: must be in [0, 1], got 1.5"),
    (("--weight-decay", "-0.1"), "--weight-decay: must be >= 0, got -0.1"),
    (("--dropout", "2"), "--dropout: must be in [0, 1), got 2"),
    (("-O", "dropout=nan"), "--dropout: expected float, got 'nan'"),
    (("--step-epochs", "0"), "--step-epochs: must be >= 1, got 0"),
    (("--device", "tpu"), "--device: unknown device 'tpu'"),
    (("--model", "s8-net", "resnet"), "two models named"),
])
def test_bad_values_name_their_flag(argv, needle):
    with pytest.raises(ConfigError) as info:
        parse(*argv)
    assert needle in str(info.value)


def test_model_options_shared_by_flag_and_spec_carry_their_ranges():
    with pytest.raises(SettingError, match=r"options\.dropout: must be in \[0, 1\), got 2"):
        ModelConfig("s8-net", {"dropout": 2.0})
    with pytest.raises(SettingError, match=r"options\.norm: unknown value 'xn'"):
        ModelConfig("s8-net", {"norm": "xn"})
    assert ModelConfig("keras-cnn", {"dropout_conv": 0.25}).options == {"dropout_conv": 0.25}  # a model's own


def test_a_config_round_trips_through_json():
    cfg = parse("--norm", "gn", "-O", "width=16", "--lr", "0.1", "--val", "100", "--tta", "--max-params", "50000")
    assert from_dict(RunConfig, json.loads(json.dumps(to_dict(cfg)))) == cfg
    assert cfg.model.options == {"norm": "gn", "width": 16}


def test_python_callers_get_the_same_checks_as_the_command_line():
    with pytest.raises(SettingError, match="lr: must be > 0"):
        OptimConfig(lr=0)
    with pytest.raises(SettingError, match="nesterov needs momentum"):
        OptimConfig(momentum=0.0)
    assert OptimConfig(lr=1).lr == 1.0 and isinstance(OptimConfig(lr=1).lr, float)
    with pytest.raises(SettingError, match="expected bool"):
        OptimConfig(nesterov=1)  # type: ignore[arg-type]
    assert dataclasses.replace(RunConfig(), max_params=10).max_params == 10
    with pytest.raises(SettingError):
        dataclasses.replace(RunConfig(), max_params=0)


@pytest.mark.parametrize("name", ["", ".", "..", "../up", "a/b", "a\\b", "/abs", ".hidden", "~home", "tab\there",
                                  "nul\x00", "x" * 101, "store.sqlite", "report.html", "Report.MD", "report-files",
                                  "run.incomplete"])
def test_unusable_folder_names_are_refused(name):
    assert folder_name_problem(name)


@pytest.mark.parametrize("name", ["bn", "dropout-l2-bn", "GN_8", "x" * 100, "lr=0.1"])
def test_usable_folder_names_pass(name):
    assert folder_name_problem(name) is None


def test_common_model_options_are_the_ones_with_flags():
    assert [f.name for f in dataclasses.fields(CommonModelOptions)] == ["norm", "groups", "dropout"]


def test_a_version_1_store_is_upgraded_and_keeps_its_runs(tmp_path):
    from cifarlab.store import RunRecord, Store

    v1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (experiment TEXT NOT NULL, seed INTEGER NOT NULL, run_dir TEXT NOT NULL, model TEXT NOT NULL,
    params INTEGER NOT NULL, epochs INTEGER NOT NULL, test_acc REAL NOT NULL, train_acc REAL NOT NULL,
    test_acc_tta REAL, val_acc REAL, seconds REAL NOT NULL, warmup_seconds REAL NOT NULL, device TEXT NOT NULL,
    config TEXT NOT NULL, history TEXT NOT NULL, finished TEXT NOT NULL DEFAULT (datetime('now')),
    PRIMARY KEY (experiment, seed));
PRAGMA user_version = 1;
"""
    history = [{"epoch": 1, "test_acc": 0.5, "train_acc": 0.6, "test_acc_tta": 0.52, "test_acc_tta6": 0.53}]
    with sqlite3.connect(tmp_path / "store.sqlite") as db:
        db.executescript(v1)
        db.execute("INSERT INTO runs (experiment, seed, run_dir, model, params, epochs, test_acc, train_acc, seconds, "
                   "warmup_seconds, device, config, history) VALUES ('bn', 0, 'bn/seed-0', 's8-net', 10, 1, 0.5, 0.6, "
                   "1.0, 0.0, 'cpu', '{}', ?)", (json.dumps(history),))
    with Store(tmp_path, create=False) as store:  # a reader never writes, not even the upgrade
        (old,) = store.runs()
    assert old.test_acc_tta6 == 0.53 and old.val_acc is None
    with Store(tmp_path) as store:
        store.record(RunRecord("bn", 1, "bn/seed-1", "s8-net", 10, 1, 1.0, 0.0, "cpu", {}, history))
        assert [r.seed for r in store.runs()] == [0, 1]
    with sqlite3.connect(tmp_path / "store.sqlite") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2
        assert db.execute("SELECT test_acc_tta6 FROM runs WHERE seed = 1").fetchone()[0] == 0.53
