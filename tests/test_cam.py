"""Grad-CAM: maps equal captum's LayerGradCam (an independent implementation) on a registry model and a model
file; the default layer; cams.npz written at training time; the report's mistakes grid draws it, and older
runs without it keep the plain grid."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import TINY_TRAIN
from explain_helpers import train_run, write_data, write_model_file
from test_cli import assert_one_line_error

pytestmark = pytest.mark.usefixtures("single_thread")

captum = pytest.importorskip("captum.attr", reason="captum (the `test` extra) gives the independent Grad-CAM")


def _with_statistics(build) -> nn.Module:
    """`build()` seeded, with non-trivial BN statistics and weights as after training (maps not degenerate)."""
    torch.manual_seed(1)
    model = build()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return model.eval()


def _compare(model: nn.Module, layer: str) -> None:
    from cifarlab.cam import grad_cam

    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    predicted = model(x).argmax(1)
    other = (predicted + 3) % 10  # a second class per image, as the true class of a mistake would be
    ours = grad_cam(model, x, [predicted, other], layer)
    ref = torch.cat([captum.LayerGradCam(model, model.get_submodule(layer)).attribute(x, target=target,
                                                                                     relu_attributions=True)
                     for target in (predicted, other)], 1).detach()
    assert ours.shape == ref.shape
    scale = ref.abs().max()
    assert scale > 0 and (ref[:, 0] > 0).any(), "a degenerate comparison: the maps are zero"
    assert (ours - ref).abs().max() <= 1e-5 * scale


@pytest.mark.parametrize("layer", ["c6", "C5.0", "C2.0"])
def test_maps_match_captum_on_a_registry_model(layer):
    # c6 is the default layer; C5.0 and C2.0 are convs followed by an in-place ReLU, which must not leak into
    # the map that is differentiated.
    from cifarlab.models import create_model

    _compare(_with_statistics(lambda: create_model("s8-net", width=8)), layer)


def test_maps_match_captum_on_a_model_from_a_file(tmp_path):
    from cifarlab.cam import pick_layer
    from cifarlab.config import ModelConfig
    from cifarlab.models import model_from_config

    net = write_model_file(tmp_path, tmp_path / "marker")
    model = _with_statistics(lambda: model_from_config(ModelConfig(name=f"{net}:Net")))
    layer, size = pick_layer(model)
    assert (layer, size) == ("c3", (16, 16))  # the last conv (16x16 after the pool)
    _compare(model, layer)
    _compare(model, "c1.0")


def test_the_default_layer_is_the_last_conv_with_a_map_of_at_least_8x8():
    from cifarlab.cam import pick_layer
    from cifarlab.models import create_model

    assert pick_layer(create_model("s8-net", width=8)) == ("c6", (14, 14))  # C7-C9 are 7x7
    assert pick_layer(create_model("budget-net")) == ("stages.2.conv1", (8, 8))  # its output, before the pool
    assert pick_layer(create_model("budget-net", pool="late")) == ("stages.2.conv2", (8, 8))  # pools after it
    assert pick_layer(create_model("s8-net", width=8), "C4") == ("C4.0", (14, 14))  # by label, as inspect shows


def test_a_model_the_analysis_cannot_trace_is_probed_instead():
    from cifarlab.cam import conv_layers, pick_layer

    class Branchy(nn.Module):  # data-dependent control flow: torch.fx cannot trace it
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3, padding=1)
            self.b = nn.Conv2d(4, 4, 3, stride=4)
            self.head = nn.Linear(4, 10)

        def forward(self, x):
            x = self.a(x)
            if x.sum() > 0:
                x = x * 2
            return self.head(self.b(x).mean((2, 3)))

    model = Branchy()
    assert [(name, size) for name, _, size in conv_layers(model)] == [("a", (32, 32)), ("b", (8, 8))]
    assert pick_layer(model) == ("b", (8, 8))


def test_an_unknown_cam_layer_lists_the_candidates(cli, tmp_path):
    data = write_data(tmp_path / "cifar", n_train=4, n_test=2)
    run = train_run(tmp_path / "run", data)
    line = assert_one_line_error(cli("predict", run, data / "test" / "cat" / "000.png", "--cam", tmp_path / "c",
                                     "--cam-layer", "C11"), "--cam-layer 'C11'", "C5 (14x14)", "c6 (14x14)")
    assert "C10 (1x1)" in line
    assert not (tmp_path / "c").exists()


# ---------------------------------------------------------------------------------------------
# cams.npz, written when the run trains


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    data = write_data(tmp_path_factory.mktemp("data") / "cifar", n_train=8, n_test=6)
    return train_run(tmp_path_factory.mktemp("runs") / "s8", data)


def test_a_run_stores_the_maps_of_its_report_grid(run_dir):
    from cifarlab.cam import for_display, grad_cam
    from cifarlab.inference import load_run, normalise
    from cifarlab.mistakes import MAX_MISTAKES, load_cams, top_mistakes

    cams = load_cams(run_dir / "cams.npz")
    assert cams is not None and cams.layer == "c6" and cams.map_size == (14, 14)
    with np.load(run_dir / "predictions.npz") as z:
        probs, labels = z["probs"], z["labels"]
    assert len(cams.indices) == MAX_MISTAKES and np.array_equal(cams.indices, top_mistakes(probs, labels))
    assert np.array_equal(cams.predicted, probs[cams.indices].astype(np.float32).argmax(1))
    assert np.array_equal(cams.labels, labels[cams.indices])
    assert (cams.predicted != cams.labels).all()
    # The stored maps are the final model's: recompute them from model.pt and the test images.
    from cifarlab.data import load_cifar10

    run = load_run(run_dir)
    data_root = json.loads((run_dir / "config.json").read_text())["data"]["root"]
    x = normalise(load_cifar10(data_root).test_x[cams.indices], run.mean, run.std)
    maps, peaks = for_display(grad_cam(run.model, x, [torch.from_numpy(cams.predicted),
                                                       torch.from_numpy(cams.labels)], "c6"))
    assert np.abs(maps - cams.maps).max() < 2e-3  # float16 storage
    assert np.allclose(peaks, cams.peaks, rtol=1e-4, atol=1e-8)


def test_a_run_without_mistakes_or_with_nan_logits_stores_no_maps(run_dir):
    from cifarlab.cam import mistake_cams
    from cifarlab.inference import load_run

    model = load_run(run_dir).model
    x, y = torch.randn(5, 3, 32, 32), torch.arange(5)
    perfect = torch.nn.functional.one_hot(y, 10).float() * 10
    assert mistake_cams(model, x, perfect, y) is None
    assert mistake_cams(model, x, torch.full((5, 10), float("nan")), y) is None


def test_damaged_cams_files_read_as_missing(tmp_path, run_dir):
    from cifarlab.mistakes import load_cams

    data = (run_dir / "cams.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    np.savez(tmp_path / "shape.npz", **{**dict(np.load(run_dir / "cams.npz")), "maps": np.zeros((3, 2, 32, 32))})
    np.savez(tmp_path / "range.npz", **{**dict(np.load(run_dir / "cams.npz")),
                                        "maps": np.full((24, 2, 32, 32), 7.0, dtype=np.float16)})
    for name in ("cut.npz", "shape.npz", "range.npz", "missing.npz"):
        assert load_cams(tmp_path / name) is None, name


# ---------------------------------------------------------------------------------------------
# The report


STUDY = """
name = "camstudy"
[data]
root = "{root}"
subset = 60
[model]
name = "s8-net"
options = {{ width = 8 }}
""" + TINY_TRAIN + """[[experiments]]
name = "{name}"
"""


def _mistakes_caption(folder: Path) -> str:
    text = (folder / "report.md").read_text()
    return next(line for line in text.splitlines() if "most confident mistakes" in line)


def test_the_report_shows_grad_cam_beside_each_mistake_and_older_runs_the_plain_grid(cli, tmp_path):
    data = write_data(tmp_path / "cifar", n_train=6, n_test=4)
    (tmp_path / "s.toml").write_text(STUDY.format(name="one", root=data))
    assert cli("study", tmp_path / "s.toml", "--out", tmp_path / "st").code == 0
    run = tmp_path / "st" / "one" / "seed-0"
    result = cli("report", tmp_path / "st", "--data", data)
    assert result.code == 0, result.err
    assert "Grad-CAM at layer `c6` (14x14 map" in _mistakes_caption(tmp_path / "st")
    with_cams = (tmp_path / "st" / "report-files" / "one-mistakes.png").read_bytes()

    shutil.move(run / "cams.npz", tmp_path / "cams.npz")  # a run from before cams.npz
    assert cli("report", tmp_path / "st", "--data", data).code == 0
    assert "Grad-CAM" not in _mistakes_caption(tmp_path / "st")
    plain = (tmp_path / "st" / "report-files" / "one-mistakes.png").read_bytes()
    wide, narrow = (Image.open(io.BytesIO(png)).size[0] for png in (with_cams, plain))
    assert wide > narrow  # three tiles per mistake instead of one

    # Maps of other images (a file copied from another run) are not drawn over these.
    with np.load(tmp_path / "cams.npz") as z:
        arrays = dict(z)
    arrays["indices"] = arrays["indices"][::-1].copy()
    np.savez(run / "cams.npz", **arrays)
    assert cli("report", tmp_path / "st", "--data", data).code == 0
    assert "Grad-CAM" not in _mistakes_caption(tmp_path / "st")


def test_the_report_still_imports_no_model_code(cli, tmp_path):
    # The maps come from cams.npz: a study of a file model reports without importing that file.
    data = write_data(tmp_path / "cifar", n_train=6, n_test=4)
    marker = tmp_path / "imports.log"
    net = write_model_file(tmp_path / "course", marker)
    (tmp_path / "s.toml").write_text(STUDY.format(name="own", root=data).replace('name = "s8-net"', f'name = "{net}:Net"')
                                     .replace("options = { width = 8 }", ""))
    assert cli("study", tmp_path / "s.toml", "--out", tmp_path / "st").code == 0
    marker.unlink()
    from conftest import run_console

    result = run_console("report", tmp_path / "st", "--data", data)
    assert result.code == 0, result.err
    assert not marker.exists()
    assert "Grad-CAM at layer `c3`" in _mistakes_caption(tmp_path / "st")
