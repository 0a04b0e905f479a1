"""Your own model: FILE.py:NAME and package.module:NAME in train, inspect and studies; every error one line;
provenance in the run folder; log-softmax models train like logit models; the Python API and the example."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, TINY_TRAIN, write_batches
from test_cli import FAST, assert_no_run_left, assert_one_line_error

pytestmark = pytest.mark.usefixtures("single_thread")

# A course-style model, small enough for CPU tests: norm by string, a residual add, GAP, `view(-1, 10)` and
# (by default) log-probabilities as output.
NET = '''
import torch.nn as nn
import torch.nn.functional as F

from cifarlab.layers import norm_layer


class Net(nn.Module):
    def __init__(self, norm: str = "bn", groups: int = 2, width: int = 8, log_probs: bool = True):
        super().__init__()
        Norm = norm_layer(norm, groups)
        self.c1 = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.ReLU(), Norm(width))
        self.pool = nn.MaxPool2d(4)
        self.c2 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.ReLU(), Norm(width))
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Conv2d(width, 10, 1)
        self.log_probs = log_probs

    def forward(self, x):
        x = self.pool(self.c1(x))
        x = x + self.c2(x)
        x = self.head(self.gap(x)).view(-1, 10)
        return F.log_softmax(x, dim=-1) if self.log_probs else x


def make_net(width: int = 8):
    return Net(width=width)
'''
NET_PARAMS = 3 * 8 * 9 + 16 + 8 * 8 * 9 + 16 + 8 * 10 + 10


def write(folder: Path, name: str, code: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(code))
    return path


@pytest.fixture
def net_file(tmp_path) -> Path:
    return write(tmp_path / "course", "mynet.py", NET)


def train(cli, data, out, *extra):
    return cli("train", "--data", data, "--out", out, *FAST, *extra)


# ---------------------------------------------------------------------------------------------
# Training a file model: each norm, provenance


@pytest.mark.parametrize("norm", ["bn", "gn", "ln"])
def test_a_file_model_trains_with_each_norm_and_records_where_it_came_from(cli, tiny_folder, tmp_path, net_file, norm):
    out = tmp_path / "runs" / norm
    result = train(cli, tiny_folder.root, out, "--model", f"{net_file}:Net", "--norm", norm)
    assert result.code == 0, result.err
    assert f"{NET_PARAMS:,} trainable params" in result.out
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["name"] == f"{net_file}:Net" and config["model"]["options"] == {"norm": norm}
    assert config["model"]["source"] == {"path": str(net_file), "object": "Net",
                                         "sha256": hashlib.sha256(net_file.read_bytes()).hexdigest()}
    assert (out / "model_source.py").read_bytes() == net_file.read_bytes()
    ckpt = torch.load(out / "model.pt", weights_only=True)
    assert ckpt["config"]["model"]["source"] == config["model"]["source"]  # the weights know their code too


def test_a_relative_path_is_taken_from_the_working_directory(cli, tiny_folder, net_file, monkeypatch):
    monkeypatch.chdir(net_file.parent)
    result = cli("train", "--data", tiny_folder.root, *FAST, "--model", "mynet.py:Net")
    assert result.code == 0, result.err
    (run,) = (net_file.parent / "runs").iterdir()
    assert run.name.startswith("mynet-Net-")  # the default folder name holds no ':' or '/'
    assert json.loads((run / "config.json").read_text())["model"]["source"]["path"] == str(net_file)


def test_a_factory_function_in_a_module_on_the_path(cli, tiny_folder, tmp_path, monkeypatch):
    package = f"course_pkg_{os.getpid()}"  # unique: sys.modules outlives a test
    write(tmp_path, f"{package}/__init__.py", "")
    nets = write(tmp_path, f"{package}/nets.py", NET)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "r"
    result = train(cli, tiny_folder.root, out, "--model", f"{package}.nets:make_net", "-O", "width=4")
    assert result.code == 0, result.err
    source = json.loads((out / "config.json").read_text())["model"]["source"]
    assert source["module"] == f"{package}.nets" and source["path"] == str(nets) and source["object"] == "make_net"
    assert (out / "model_source.py").read_bytes() == nets.read_bytes()


def test_a_recorded_config_rebuilds_the_model_and_refuses_a_changed_file(net_file):
    from cifarlab.config import ModelConfig
    from cifarlab.errors import ConfigError
    from cifarlab.models import model_from_config, resolve

    cfg = resolve(ModelConfig(name="mynet.py:Net", options={"width": 4}), base=net_file.parent)
    assert sum(p.numel() for p in model_from_config(cfg).parameters()) > 0
    net_file.write_text(NET.replace("width: int = 8", "width: int = 6"))
    with pytest.raises(ConfigError, match="changed since it was recorded"):
        model_from_config(cfg)


# ---------------------------------------------------------------------------------------------
# Errors: one line, exit 2, no run folder


BROKEN = {
    "syntax": ("class Net(nn.Module:\n    pass\n", ["importing mynet.py failed: SyntaxError", "(line 1)"]),
    "name-error": ("import torch.nn as nn\n\nlayers = [nn.Conv2d(3, 8, 3), Dropout(0.1)]\n",
                   ["NameError: name 'Dropout' is not defined", "(line 3)"]),
    "missing-import": ("import torchsummary_not_installed\n", ["ModuleNotFoundError", "torchsummary_not_installed"]),
    "constructor": ("import torch.nn as nn\n\nclass Net(nn.Module):\n    def __init__(self):\n"
                    "        super().__init__()\n        raise ValueError('width must be even')\n",
                    ["Net(...) failed: ValueError: width must be even", "(line 6)"]),
    "not-a-module-class": ("class Net:\n    pass\n", ["'Net' is a class that is not an nn.Module"]),
    "factory-returns-other": ("def Net():\n    return [1, 2]\n", ["Net(...) returned a list, not an nn.Module"]),
    "not-callable": ("Net = 3\n", ["'Net' is a int, not an nn.Module class or a function"]),
    "instance": ("import torch.nn as nn\nNet = nn.Linear(2, 2)\n", ["'Net' is a model instance"]),
    "wrong-shape": (NET.replace("self.pool = nn.MaxPool2d(4)", "self.pool = nn.Identity()")
                    .replace("nn.AdaptiveAvgPool2d(1)", "nn.AdaptiveAvgPool2d(2)"),
                    ["returns shape (8, 10) for a batch of 2 images; expected (2, 10)"]),
    "forward-fails": (NET.replace("self.head = nn.Conv2d(width, 10, 1)", "self.head = nn.Conv2d(width + 1, 10, 1)"),
                      ["fails on a batch of 2 images 3x32x32: RuntimeError",
                       f"(line {NET.splitlines().index('        x = self.head(self.gap(x)).view(-1, 10)') + 1})"]),
    "tuple-output": (NET.replace("return F.log_softmax(x, dim=-1) if self.log_probs else x", "return x, x"),
                     ["returns a tuple, not a tensor of shape (batch, 10)"]),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_model_file_is_one_line(cli, tiny_folder, tmp_path, case):
    code, needles = BROKEN[case]
    path = write(tmp_path, "mynet.py", code)
    out = tmp_path / "runs" / "r"
    line = assert_one_line_error(train(cli, tiny_folder.root, out, "--model", f"{path}:Net"), *needles)
    assert f"{path}:Net" in line  # which model, as the user named it
    assert_no_run_left(out)


@pytest.mark.parametrize("model,extra,needles", [
    ("{dir}/nope.py:Net", (), ["model file '{dir}/nope.py' not found"]),
    ("{file}:Nett", (), ["mynet.py has no 'Nett' (it defines Net, make_net)"]),
    ("{file}:", (), ["expected FILE.py:NAME or package.module:NAME"]),
    ("no_such_package_xyz.nets:make", (), ["cannot import module 'no_such_package_xyz.nets': ModuleNotFoundError"]),
    ("{file}:Net", ("-O", "depth=3"), ["has no option 'depth' (options: norm, groups, width, log_probs)"]),
    ("{file}:Net", ("-O", "width=wide"), ["option 'width' expects int, got 'wide'"]),
    ("{file}:Net", ("-O", "log_probs=1"), ["option 'log_probs' expects bool, got 1"]),
    ("{file}:make_net", ("--norm", "gn"), ["make_net' takes no 'norm' option", "options: width"]),
    ("{file}:make_net", ("--dropout", "0.1"), ["takes no 'dropout' option"]),
    ("{file}:Net", ("--max-params", "500"), [f"{NET_PARAMS - 500:,} over the budget of 500"]),
], ids=["missing-file", "no-such-name", "no-name", "no-module", "unknown-option", "wrong-type", "bool-not-int",
        "norm-not-taken", "dropout-not-taken", "over-budget"])
def test_model_errors_are_one_line(cli, tiny_folder, tmp_path, net_file, model, extra, needles):
    fill = {"dir": tmp_path, "file": net_file}
    out = tmp_path / "runs" / "r"
    assert_one_line_error(train(cli, tiny_folder.root, out, "--model", model.format(**fill), *extra),
                          *(n.format(**fill) for n in needles))
    assert_no_run_left(out)


def test_annotations_are_checked_where_there_is_no_default_and_required_options_are_asked_for(cli, tmp_path):
    path = write(tmp_path, "req.py", NET.replace("def make_net(width: int = 8):", "def make_net(width: int):"))
    assert_one_line_error(cli("inspect", f"{path}:make_net"), "needs a value for 'width'", "-O width=VALUE")
    assert_one_line_error(cli("inspect", f"{path}:make_net", "-O", "width=2.5"),
                          "option 'width' expects int, got 2.5")
    assert cli("inspect", f"{path}:make_net", "-O", "width=4").code == 0


def test_registry_and_file_models_share_the_option_checks():
    from cifarlab.errors import ConfigError
    from cifarlab.models import create_model

    with pytest.raises(ConfigError, match="model 'keras-cnn' takes no 'dropout' option"):
        create_model("keras-cnn", dropout=0.1)  # was "has no option": a shared flag now says it cannot apply


def test_an_error_in_a_fresh_interpreter_is_one_line(tmp_path):
    from conftest import run_console

    path = write(tmp_path, "mynet.py", BROKEN["name-error"][0])
    result = run_console("inspect", f"{path}:Net", cwd=tmp_path)
    assert result.code == 2 and len(result.err_lines) == 1 and "Traceback" not in result.err
    assert "NameError: name 'Dropout' is not defined (line 3)" in result.err


# ---------------------------------------------------------------------------------------------
# inspect and models


def test_inspect_prints_the_receptive_field_table_of_a_file_model(cli, net_file, monkeypatch):
    monkeypatch.chdir(net_file.parent)
    result = cli("inspect", "mynet.py:Net", "--norm", "ln", "--max-params", "50000")
    assert result.code == 0, result.err
    rows = {line.split()[0]: line.split() for line in result.out.splitlines() if line.strip()}
    assert "R_out" in rows["layer"]
    assert rows["c1.2"][1] == "LayerNorm2d"
    assert rows["gap"][1] == "AdaptiveAvgPool2d"
    assert f"within budget: {NET_PARAMS:,} <= 50,000" in result.out
    assert cli("inspect", "--model", "mynet.py:Net", "--max-params", "100").code == 1  # over budget: a verdict


def test_models_lists_the_registry_and_says_how_to_use_your_own(cli):
    result = cli("models")
    assert result.code == 0 and "--model path/to/file.py:Net" in result.out


# ---------------------------------------------------------------------------------------------
# Studies


SPEC = """
name = "own"
seeds = 1
[budget]
max_params = 50000
[model]
name = "models/mynet.py:Net"
""" + TINY_TRAIN + """[[experiments]]
name = "bn"
baseline = true
model = {{ options = {{ norm = "bn" }} }}
[[experiments]]
name = "gn"
model = {{ options = {{ norm = "gn", groups = 2 }} }}
[[experiments]]
name = "ln"
model = {{ options = {{ norm = "ln" }} }}
[data]
root = "{data}"
subset = 40
"""


def test_a_study_finds_the_model_beside_its_spec_from_any_folder_and_refuses_a_changed_file(tiny_folder, tmp_path,
                                                                                         monkeypatch):
    from cifarlab.cli import main

    course = tmp_path / "course"
    net = write(course, "models/mynet.py", NET)
    spec = write(course, "norms.toml", SPEC.format(data=tiny_folder.root))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    # --jobs 2: the runs train in spawned processes, which find the file through the recorded absolute path.
    assert main(["study", str(spec), "--out", "study", "--jobs", "2"]) == 0
    study = elsewhere / "study"
    for exp in ("bn", "gn", "ln"):
        run = study / exp / "seed-0"
        assert (run / "model_source.py").read_bytes() == net.read_bytes()
        assert json.loads((run / "config.json").read_text())["model"]["source"]["path"] == str(net)

    # Resumed with the same file: nothing to do. With a changed file: refused, the results untouched.
    assert main(["study", str(spec), "--out", "study"]) == 0
    net.write_text(NET.replace("width: int = 8", "width: int = 6"))
    from cifarlab.errors import ConfigError
    from cifarlab.study import load_spec, run_study

    with pytest.raises(ConfigError) as info:
        run_study(load_spec(spec), out=study, log=lambda line: None)
    assert "changed" in str(info.value) and str(net) in str(info.value) and "--out" in str(info.value)


def test_a_study_with_a_missing_model_file_names_the_spec_and_experiment(tmp_path):
    from cifarlab.errors import ConfigError
    from cifarlab.study import load_spec

    spec = write(tmp_path, "norms.toml", SPEC.format(data=tmp_path))
    with pytest.raises(ConfigError) as info:
        load_spec(spec)
    message = str(info.value)
    assert str(spec) in message and "experiments.bn.model.name" in message
    assert "model file 'models/mynet.py' not found" in message


# ---------------------------------------------------------------------------------------------
# Log-softmax outputs


def test_a_log_softmax_model_trains_evaluates_and_predicts_like_the_same_model_returning_logits(tiny_folder, tmp_path,
                                                                                               net_file):
    # Cross-entropy (label smoothing too) and softmax read log-probabilities as logits shifted per row; argmax
    # and the TTA average (a per-row shift again) are unchanged. So the same seed must give the same run.
    from cifarlab.config import RunConfig, from_dict
    from cifarlab.experiment import run_experiment

    runs = {}
    for log_probs in (True, False):
        cfg = from_dict(RunConfig, {
            "data": {"root": str(tiny_folder.root), "subset": 40},
            "model": {"name": f"{net_file}:Net", "options": {"log_probs": log_probs}},
            "train": {"epochs": 2, "batch_size": 16, "device": "cpu", "compile": "off", "tta": True,
                      "reg": {"label_smoothing": 0.1}}})
        out = tmp_path / f"log_probs-{log_probs}"
        runs[log_probs] = (run_experiment(cfg, out, log=None), np.load(out / "predictions.npz")["probs"])
    (with_log, probs_log), (with_logits, probs_logits) = runs[True], runs[False]
    assert len(with_log.rows) == len(with_logits.rows) == 2
    for a, b in zip(with_log.rows, with_logits.rows):
        for key in ("train_loss", "train_acc", "test_loss", "test_acc", "test_acc_tta", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key
    assert "test_acc_tta6" in with_log.final
    assert with_log.final["test_acc_tta6"] == pytest.approx(with_logits.final["test_acc_tta6"], abs=1e-6)
    np.testing.assert_allclose(probs_log.astype(np.float32), probs_logits.astype(np.float32), atol=2e-3)


# ---------------------------------------------------------------------------------------------
# The Python API


def test_import_cifarlab_does_not_load_torch():
    code = "import sys, cifarlab; assert 'torch' not in sys.modules; print(callable(cifarlab.fit))"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "True", proc.stderr


def test_fit_trains_a_model_object_in_place_and_returns_its_history(tiny_folder, tmp_path, net_file):
    import cifarlab

    sys.path.insert(0, str(net_file.parent))
    try:
        from mynet import Net
    finally:
        sys.path.remove(str(net_file.parent))
    torch.manual_seed(0)
    model = Net(norm="gn")
    before = [p.detach().clone() for p in model.parameters()]
    history = cifarlab.fit(model, data=tiny_folder.root, epochs=1, batch_size=16, subset=40, device="cpu",
                           compile="off", log=None)
    assert len(history.rows) == 1 and 0 <= history.final["test_acc"] <= 1
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # trained in place

    out = tmp_path / "api-run"
    cifarlab.fit(model, data=tiny_folder.root, out=out, epochs=1, batch_size=16, subset=40, device="cpu",
                 compile="off", log=None)
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["name"] == "Net (object)" and config["model"]["source"]["path"] == str(net_file)
    assert (out / "model_source.py").read_bytes() == net_file.read_bytes()


def test_fit_by_name_writes_the_run_folder_train_writes(tiny_folder, tmp_path, net_file):
    import cifarlab

    out = tmp_path / "by-name"
    history = cifarlab.fit(f"{net_file}:Net", norm="ln", data=tiny_folder.root, out=out, epochs=1, batch_size=16,
                           subset=40, device="cpu", compile="off", augment="none", log=None)
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["options"] == {"norm": "ln"} and config["train"]["augment"] == "none"
    assert json.loads((out / "history.json").read_text())["epochs"] == history.rows


@pytest.mark.parametrize("call,message", [
    (lambda c, m: c.fit(m, learning_rate=0.1), "unknown setting 'learning_rate'"),
    (lambda c, m: c.fit(m, lr=0), "lr: must be > 0, got 0"),
    (lambda c, m: c.fit(m, optimizer="rmsprop"), "optimizer: unknown value 'rmsprop'"),
    (lambda c, m: c.fit(m, norm="gn"), "'norm' is a model option"),
    (lambda c, m: c.fit(3), "takes an nn.Module or a model name"),
])
def test_fit_refuses_bad_settings_before_any_work(call, message):
    import cifarlab
    from cifarlab.errors import ConfigError
    from cifarlab.models import create_model

    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        call(cifarlab, create_model("s8-net", width=8))


def test_layer_table_of_an_object_and_of_a_name(net_file):
    import cifarlab
    from cifarlab.analysis import LayerTable

    table = cifarlab.layer_table(f"{net_file}:Net", norm="ln")
    assert isinstance(table, LayerTable) and table.trainable_params == NET_PARAMS
    text = cifarlab.layer_table(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), format="markdown")
    assert text.startswith("| layer | type |")


def test_run_study_and_write_report_from_python(tiny_folder, tmp_path):
    import cifarlab

    course = tmp_path / "course"
    write(course, "models/mynet.py", NET)
    spec = write(course, "norms.toml", SPEC.format(data=tiny_folder.root))
    folder = cifarlab.run_study(spec, out=tmp_path / "study", log=lambda line: None)
    html, md = cifarlab.write_report(folder)
    assert html.is_file() and md.is_file()
    text = md.read_text()
    assert "LayerNorm2d" in text and "models/mynet.py:Net" in text  # layer table rebuilt from the recorded file


# ---------------------------------------------------------------------------------------------
# The example


def test_the_example_walkthrough_runs_end_to_end(tmp_path):
    # The example as shipped, cut to tiny data: a copy whose study spec trains 1 epoch on 40 images.
    examples = tmp_path / "examples"
    examples.mkdir()
    for name in ("course_net.py", "walkthrough.py"):
        (examples / name).write_bytes((REPO / "examples" / name).read_bytes())
    spec = (REPO / "examples" / "norms.toml").read_text()
    for old, new in (("subset = 2000", "subset = 40"), ("epochs = 2", "epochs = 1"), ("batch_size = 128",
                                                                                     "batch_size = 16")):
        assert old in spec
        spec = spec.replace(old, new)
    (examples / "norms.toml").write_text(spec)
    data = tmp_path / "data"
    write_batches(data, per_batch=8, n_test=20)
    # One thread per process: on tiny batches a second one costs more than it gives (see single_thread).
    env = {**os.environ, "CIFARLAB_DATA": str(data), "CIFARLAB_NO_PROGRESS": "1", "PYTHONPATH": str(REPO / "src"),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(examples / "walkthrough.py"), "--out", str(tmp_path / "runs"),
                           "--epochs", "1", "--subset", "40"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    runs = tmp_path / "runs"
    code = (examples / "course_net.py").read_bytes()
    assert (runs / "gn" / "model_source.py").read_bytes() == code
    for norm in ("bn", "gn", "ln"):
        assert (runs / "study" / norm / "seed-0" / "model_source.py").read_bytes() == code
    assert (runs / "study" / "report.html").is_file() and (runs / "api-gn" / "history.json").is_file()
    assert "within budget: 40,316 <= 50,000" in proc.stdout
    assert "from Python: test accuracy" in proc.stdout


def test_a_model_that_flattens_with_view_trains_in_nchw_where_channels_last_would_break_it():
    # On CUDA the trainer puts models and batches in channels_last; `x.view(x.size(0), -1)` on such a
    # map raises. The trainer probes a copy first and keeps NCHW for such a model (CPU-testable).
    import torch
    from torch import nn

    from cifarlab.train import _memory_format

    class ViewNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.fc = nn.Linear(4 * 32 * 32, 10)

        def forward(self, x):
            return self.fc(self.bn(self.conv(x)).view(x.size(0), -1))

    class PoolNet(ViewNet):
        def forward(self, x):
            return self.fc(torch.flatten(self.bn(self.conv(x)), 1))

    probe = torch.randn(2, 3, 32, 32)
    view_net = ViewNet()
    before = {k: v.clone() for k, v in view_net.state_dict().items()}
    assert _memory_format(view_net, probe) == torch.contiguous_format
    assert _memory_format(PoolNet(), probe) == torch.channels_last
    assert all(torch.equal(before[k], v) for k, v in view_net.state_dict().items())  # BN stats untouched
    assert view_net.training


def test_a_file_model_may_mean_something_else_by_an_option_name_the_registry_models_use(cli, tmp_path):
    # budget-net's `stem` and s8-net's `width` are channel counts (ints >= 1); a user's model is free to
    # take `width=0.5` as a multiplier. Only the shared options (norm, groups, dropout) bind every model.
    path = write(tmp_path, "mult.py", NET.replace("width: int = 8", "width: float = 1.0")
                 .replace("Norm = norm_layer(norm, groups)", "Norm = norm_layer(norm, groups); width = int(8 * width)"))
    assert cli("inspect", f"{path}:Net", "-O", "width=0.5").code == 0
    assert_one_line_error(cli("inspect", "s8-net", "-O", "width=1"), "-O width", "must be >= 2")
