"""`cifarlab export`: ONNX with the normalisation folded in, a dynamic batch and a parity check in onnxruntime;
TorchScript; the missing extra, a mismatch and bad run folders are one line."""
from __future__ import annotations

import json
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from explain_helpers import train_run, write_data, write_model_file
from test_cli import assert_one_line_error

pytestmark = pytest.mark.usefixtures("single_thread")


def _onnx_ready() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


needs_onnx = pytest.mark.skipif(not _onnx_ready(), reason="onnx, onnxscript or onnxruntime cannot be installed "
                                "here (the `test` extra installs them: pip install -e '.[test]')")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_data(tmp_path_factory.mktemp("data") / "cifar", n_train=8, n_test=5)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data) -> Path:
    return train_run(tmp_path_factory.mktemp("runs") / "s8", data)


def _images(data: Path) -> np.ndarray:
    from cifarlab.data import load_cifar10

    return load_cifar10(data).test_x  # (50, 32, 32, 3) uint8


def _reference(run_dir: Path, images: np.ndarray) -> np.ndarray:
    """The run's scores computed in PyTorch with the normalisation applied outside the model."""
    from cifarlab.inference import load_run, normalise

    run = load_run(run_dir)
    with torch.no_grad():
        return run.model(normalise(images, run.mean, run.std)).numpy()


@needs_onnx
def test_onnx_export_takes_images_in_0_1_any_batch_and_passes_its_parity_check(cli, run_dir, data, tmp_path):
    import onnx
    import onnxruntime as ort

    out = tmp_path / "model.onnx"
    result = cli("export", run_dir, "--out", out, "--data", data)
    assert result.code == 0, result.err
    assert "parity (onnxruntime vs PyTorch) on 50 test images" in result.out
    assert "top-1 agreement 100.00%" in result.out
    diff = float(result.out.split("max |score difference| ")[1].split()[0])
    assert diff < 1e-4
    images = _images(data)
    reference = _reference(run_dir, images)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / 255
    for n in (1, 7, 50):  # the batch axis is dynamic
        (scores,) = session.run(None, {session.get_inputs()[0].name: x[:n]})
        assert scores.shape == (n, 10)
        assert np.abs(scores - reference[:n]).max() < 1e-4  # the run's mean/std are inside the graph
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["classes"])[3] == "cat" and "[0, 1]" in meta["input"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temporary file left


@needs_onnx
def test_onnx_default_output_is_beside_the_run(cli, run_dir, data, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(run_dir, folder)
    assert cli("export", folder, "--data", data, "--check-images", "0").code == 0
    assert (folder / "model.onnx").is_file()


def test_torchscript_export_and_its_parity_check(cli, run_dir, data, tmp_path):
    out = tmp_path / "model.ts.pt"
    result = cli("export", run_dir, "--format", "torchscript", "--out", out, "--data", data)
    assert result.code == 0, result.err
    assert "top-1 agreement 100.00%" in result.out
    images = _images(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.jit.load is deprecated" (2.10+)
        loaded = torch.jit.load(str(out))
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float() / 255
    with torch.no_grad():
        assert np.abs(loaded(x[:3]).numpy() - _reference(run_dir, images[:3])).max() < 1e-5


def test_without_the_onnx_extra_one_line_says_what_to_install(cli, run_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed: import fails
    assert_one_line_error(cli("export", run_dir, "--out", tmp_path / "m.onnx"),
                          "needs onnxruntime", "pip install 'cifarlab[onnx]'")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("fmt", [pytest.param("onnx", marks=needs_onnx), "torchscript"])
def test_an_export_that_disagrees_with_pytorch_exits_1_and_writes_nothing(cli, run_dir, data, tmp_path,
                                                                           monkeypatch, fmt):
    import cifarlab.export as export

    real = export.run_exported

    def off(path, fmt, x, batch=500):  # a runtime that gets a few images wrong
        scores = real(path, fmt, x, batch)
        scores[:2] = -scores[:2]
        return scores

    monkeypatch.setattr(export, "run_exported", off)
    out = tmp_path / "model.out"
    result = cli("export", run_dir, "--format", fmt, "--out", out, "--data", data)
    assert result.code == 1
    assert "top-1 agreement 96.00%" in result.out  # 48 of 50
    assert result.err_lines == [f"cifarlab export: error: the exported model does not match PyTorch; '{out}' was "
                                "not written"]
    assert list(tmp_path.iterdir()) == []


def test_the_parity_check_needs_test_images(cli, run_dir, tmp_path):
    assert_one_line_error(cli("export", run_dir, "--format", "torchscript", "--out", tmp_path / "m.pt", "--data",
                              tmp_path / "nowhere"), "parity check needs CIFAR-10", "--check-images 0")


@pytest.mark.parametrize("fmt", [pytest.param("onnx", marks=needs_onnx), "torchscript"])
def test_a_bad_run_folder_is_one_line(cli, tmp_path, fmt):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.pt").write_text("garbage")
    assert_one_line_error(cli("export", tmp_path / "run", "--format", fmt), "damaged")
    assert_one_line_error(cli("export", tmp_path / "elsewhere", "--format", fmt), "does not exist")


def test_a_file_model_exports_under_the_trust_code_rule(cli, data, tmp_path):
    marker = tmp_path / "imports.log"
    net = write_model_file(tmp_path / "course", marker)
    run = train_run(tmp_path / "own", data, f"{net}:Net", options={})
    out = tmp_path / "own.ts.pt"
    assert cli("export", run, "--format", "torchscript", "--out", out, "--data", data).code == 0
    net.rename(net.with_suffix(".bak"))  # the folder is now as if received from someone else
    marker.unlink()
    assert_one_line_error(cli("export", run, "--format", "torchscript", "--out", out, "--data", data),
                          "--trust-code")
    assert not marker.exists()
    result = cli("export", run, "--format", "torchscript", "--out", out, "--data", data, "--trust-code")
    assert result.code == 0, result.err
    assert marker.exists()  # the run folder's copy was imported
