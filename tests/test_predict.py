"""`cifarlab predict`: your own images through a trained run; bad images and bad run folders are one line each;
a model file runs only when it is your own unchanged file, or with --trust-code."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_console, save_png
from explain_helpers import train_run, write_data, write_model_file
from test_cli import assert_one_line_error

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_data(tmp_path_factory.mktemp("data") / "cifar")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data) -> Path:
    return train_run(tmp_path_factory.mktemp("runs") / "s8", data)


@pytest.fixture
def images(tmp_path) -> Path:
    """A folder of three good images of different sizes and modes."""
    rng = np.random.default_rng(1)
    folder = tmp_path / "photos"
    save_png(folder / "a_wide.png", rng.integers(0, 256, (48, 80, 3), dtype=np.uint8))
    save_png(folder / "b_gray.png", rng.integers(0, 256, (40, 40), dtype=np.uint8))
    Image.fromarray(rng.integers(0, 256, (500, 375, 3), dtype=np.uint8)).save(folder / "c_photo.jpg", quality=90)
    return folder


def _table_rows(out: str) -> dict[str, list[str]]:
    lines = out.strip().splitlines()
    assert lines[0].split() == ["image", "1st", "2nd", "3rd"] and set(lines[1]) <= {"-", " "}
    return {line.split()[0]: line.split()[1:] for line in lines[2:]}


def test_each_image_gets_its_top_three_classes(cli, run_dir, images):
    result = cli("predict", run_dir, images)
    assert result.code == 0, result.err
    rows = _table_rows(result.out)
    assert list(rows) == [str(images / n) for n in ("a_wide.png", "b_gray.png", "c_photo.jpg")]  # sorted by name
    for cells in rows.values():  # "cat 23.4%" x 3, likeliest first
        probs = [float(p.rstrip("%")) for p in cells[1::2]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 100.05


def test_json_probabilities_are_the_models_on_the_runs_own_normalisation(cli, run_dir, tmp_path):
    # An independent pipeline: the PNG is already 32x32 (resizing leaves it alone), normalised with model.pt's
    # mean/std and run through the registry model with the saved weights.
    from cifarlab.models import create_model

    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    save_png(tmp_path / "x.png", pixels)
    result = cli("predict", run_dir, tmp_path / "x.png", "--format", "json")
    assert result.code == 0, result.err
    (entry,) = json.loads(result.out)
    ckpt = torch.load(run_dir / "model.pt", weights_only=True)
    model = create_model("s8-net", width=8)
    model.load_state_dict(ckpt["state_dict"])
    x = torch.from_numpy(pixels).permute(2, 0, 1).float()[None] / 255
    x = (x - torch.tensor(ckpt["mean"]).view(1, 3, 1, 1)) / torch.tensor(ckpt["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        probs = torch.softmax(model.eval()(x), 1)[0]
    top = probs.topk(3)
    assert [e["class"] for e in entry["top"]] == [ckpt["classes"][i] for i in top.indices.tolist()]
    assert np.allclose([e["probability"] for e in entry["top"]], top.values.tolist(), atol=1e-5)


def test_tta_averages_the_image_and_its_mirror(cli, run_dir, tmp_path):
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    save_png(tmp_path / "x.png", pixels)
    save_png(tmp_path / "mirror.png", pixels[:, ::-1])
    tta = [json.loads(cli("predict", run_dir, tmp_path / n, "--format", "json", "--tta").out)[0]["top"]
           for n in ("x.png", "mirror.png")]
    plain = [json.loads(cli("predict", run_dir, tmp_path / n, "--format", "json").out)[0]["top"]
             for n in ("x.png", "mirror.png")]
    assert plain[0] != plain[1]  # the model is not mirror-symmetric by itself
    assert [e["class"] for e in tta[0]] == [e["class"] for e in tta[1]]
    assert np.allclose([e["probability"] for e in tta[0]], [e["probability"] for e in tta[1]], atol=1e-5)


# ---------------------------------------------------------------------------------------------
# How images become 32x32


def test_a_non_square_image_is_centre_cropped_not_squeezed(tmp_path):
    from cifarlab.inference import load_image

    wide = np.zeros((64, 128, 3), dtype=np.uint8)
    wide[:, :32] = (255, 0, 0)  # red bands left and right, outside the central 64x64 square
    wide[:, -32:] = (255, 0, 0)
    wide[:, 32:-32] = (0, 0, 255)
    save_png(tmp_path / "wide.png", wide)
    out = load_image(tmp_path / "wide.png")
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert out[..., 0].max() == 0 and out[..., 2].min() == 255  # no red: the bands were cropped away


def test_a_large_image_is_averaged_down_not_sampled(tmp_path):
    # A 1-pixel checkerboard: antialiased resizing gives even grey, point sampling would keep black and white.
    from cifarlab.inference import load_image

    board = ((np.indices((640, 640)).sum(0) % 2) * 255).astype(np.uint8)
    save_png(tmp_path / "board.png", board)
    out = load_image(tmp_path / "board.png").astype(float)
    assert abs(out.mean() - 127.5) < 2 and out.std() < 2


def test_transparency_becomes_white_and_grey_becomes_rgb(tmp_path):
    from cifarlab.inference import load_image

    save_png(tmp_path / "clear.png", np.zeros((32, 32, 4), dtype=np.uint8))  # fully transparent black
    save_png(tmp_path / "grey.png", np.full((32, 32), 90, dtype=np.uint8))
    assert (load_image(tmp_path / "clear.png") == 255).all()
    assert (load_image(tmp_path / "grey.png") == 90).all()


# ---------------------------------------------------------------------------------------------
# Bad images: one line each, the rest still predicted, exit 2


def _truncated(path: Path) -> None:
    save_png(path, np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:300])


BAD = {
    "truncated.png": (_truncated, "truncated"),
    "text.jpg": (lambda p: p.write_text("this is a text file, not a JPEG\n"), "cannot identify"),
    "empty.png": (lambda p: p.write_bytes(b""), "cannot identify"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_a_bad_image_is_one_line_and_the_good_one_is_still_predicted(cli, run_dir, images, tmp_path, name):
    make, why = BAD[name]
    bad = tmp_path / name
    make(bad)
    result = cli("predict", run_dir, bad, images / "a_wide.png")
    assert result.code == 2
    assert len(result.err_lines) == 1 and "Traceback" not in result.err
    assert result.err_lines[0].startswith(f"cifarlab predict: error: {bad}: not a readable image") and why in result.err
    assert list(_table_rows(result.out)) == [str(images / "a_wide.png")]


def test_a_folder_mixing_good_and_bad_files(cli, run_dir, images, tmp_path):
    for name, (make, _) in BAD.items():
        make(images / name)
    (images / "notes.txt").write_text("not an image extension: skipped")
    save_png(images / "sub" / "deeper.png", np.zeros((32, 32, 3), dtype=np.uint8))  # not searched
    result = cli("predict", run_dir, images, tmp_path / "missing.png", "--format", "json")
    assert result.code == 2
    failed = sorted(line.split(": ")[2] for line in result.err_lines)
    assert failed == sorted([str(images / n) for n in BAD] + [str(tmp_path / "missing.png")])
    assert all(line.startswith("cifarlab predict: error: ") for line in result.err_lines)
    doc = json.loads(result.out)
    assert [d["image"] for d in doc if "top" in d] == [str(images / n) for n in ("a_wide.png", "b_gray.png",
                                                                                   "c_photo.jpg")]
    assert sorted(d["image"] for d in doc if "error" in d) == failed


def test_a_folder_without_images_is_an_error(cli, run_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(cli("predict", run_dir, tmp_path / "empty"), "no image files")


# ---------------------------------------------------------------------------------------------
# Bad run folders: one line, exit 2


def _damage(kind: str, folder: Path, run_dir: Path, marker: Path) -> str:
    if kind == "missing":
        return "does not exist"
    folder.mkdir()
    if kind == "no-model":
        (folder / "config.json").write_text("{}")
        return "no model.pt"
    if kind == "garbage":
        (folder / "model.pt").write_bytes(b"\x00 not a torch file " * 10)
        return "damaged"
    if kind == "truncated":
        data = (run_dir / "model.pt").read_bytes()
        (folder / "model.pt").write_bytes(data[: len(data) // 2])
        return "damaged"
    if kind == "not-ours":
        torch.save({"weights": torch.zeros(3)}, folder / "model.pt")
        return "not a cifarlab model"
    if kind == "wrong-weights":
        ckpt = torch.load(run_dir / "model.pt", weights_only=True)
        ckpt["config"]["model"]["options"] = {"width": 16}
        torch.save(ckpt, folder / "model.pt")
        return "do not fit"
    if kind == "crafted-pickle":  # a pickle that would create the marker file when unpickled
        class Boom:
            def __reduce__(self):
                return (open, (str(marker), "w"))

        with zipfile.ZipFile(folder / "model.pt", "w") as z:
            z.writestr("archive/data.pkl", pickle.dumps({"state_dict": Boom()}))
            z.writestr("archive/version", "3\n")
        return "damaged"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing", "no-model", "garbage", "truncated", "not-ours", "wrong-weights",
                                  "crafted-pickle"])
def test_a_bad_run_folder_is_one_line(cli, run_dir, images, tmp_path, kind):
    marker = tmp_path / "marker"
    needle = _damage(kind, tmp_path / "run", run_dir, marker)
    assert_one_line_error(cli("predict", tmp_path / "run", images), needle)
    assert not marker.exists()
    if kind == "crafted-pickle":  # armed: a plain torch.load would have run it
        torch.load(tmp_path / "run" / "model.pt", weights_only=False)
        assert marker.exists()


def test_a_bad_run_folder_in_a_fresh_interpreter(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.pt").write_bytes(b"PK\x03\x04 broken")
    assert_one_line_error(run_console("predict", tmp_path / "run", tmp_path / "x.png"), "damaged")


# ---------------------------------------------------------------------------------------------
# A model from a file, and the --trust-code rule


@pytest.fixture(scope="module")
def file_run(tmp_path_factory, data) -> tuple[Path, Path, Path]:
    """(run folder, the model file, the marker file its import appends to)."""
    base = tmp_path_factory.mktemp("own")
    marker = base / "imports.log"
    net = write_model_file(base / "course", marker)
    return train_run(base / "runs" / "own", data, f"{net}:Net", options={}), net, marker


def _imports(marker: Path) -> int:
    return len(marker.read_text().splitlines()) if marker.exists() else 0


def test_a_file_model_predicts_from_its_own_unchanged_file(cli, file_run, images):
    run, net, marker = file_run
    before = _imports(marker)
    result = cli("predict", run, images, "--cam", images.parent / "cams")
    assert result.code == 0, result.err
    assert len(_table_rows(result.out.split("Grad-CAM")[0])) == 3
    assert sorted(p.name for p in (images.parent / "cams").iterdir()) == [
        "a_wide.gradcam.png", "b_gray.gradcam.png", "c_photo.gradcam.png"]
    assert _imports(marker) <= before + 1  # imported at most once, from the original


@pytest.mark.parametrize("change", ["moved", "edited"])
def test_without_the_original_file_the_copy_runs_only_with_trust_code(cli, file_run, images, tmp_path, change):
    run, net, marker = file_run
    folder = tmp_path / "received"
    shutil.copytree(run, folder)
    original = net.read_bytes()
    try:
        if change == "moved":
            net.rename(net.with_suffix(".bak"))
        else:
            net.write_bytes(original + b"\n# edited\n")
        before = _imports(marker)
        assert_one_line_error(cli("predict", folder, images), "--trust-code", "model_source.py",
                              "not there any more" if change == "moved" else "changed since the run trained")
        assert _imports(marker) == before  # nothing was imported
        result = cli("predict", folder, images, "--trust-code")
        assert result.code == 0, result.err
        assert _imports(marker) == before + 1  # the copy ran, once
    finally:
        net.with_suffix(".bak").rename(net) if change == "moved" else net.write_bytes(original)


def test_trust_code_refuses_a_copy_that_is_not_the_recorded_file(cli, file_run, images, tmp_path):
    run, net, marker = file_run
    folder = tmp_path / "received"
    shutil.copytree(run, folder)
    ckpt = torch.load(folder / "model.pt", weights_only=True)
    ckpt["config"]["model"]["source"]["path"] = str(tmp_path / "gone.py")  # the original is elsewhere
    torch.save(ckpt, folder / "model.pt")
    with (folder / "model_source.py").open("a") as fh:
        fh.write("\nprint('extra code')\n")
    before = _imports(marker)
    assert_one_line_error(cli("predict", folder, images, "--trust-code"), "sha256 differs")
    assert _imports(marker) == before


def _forge(run: Path, folder: Path, path: Path, obj: str, options: dict) -> None:
    shutil.copytree(run, folder)
    ckpt = torch.load(folder / "model.pt", weights_only=True)
    ckpt["config"]["model"] = {"name": f"{path}:{obj}", "options": options,
                               "source": {"path": str(path), "object": obj,
                                          "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}}
    torch.save(ckpt, folder / "model.pt")


def test_a_forged_config_cannot_call_a_python_library_function(cli, file_run, images, tmp_path):
    # os.py has the same sha256 on every machine with this Python: a folder from elsewhere could name it.
    run, _, _ = file_run
    victim = tmp_path / "created-by-forged-folder"
    _forge(run, tmp_path / "forged", Path(os.__file__), "makedirs", {"name": str(victim)})
    assert_one_line_error(cli("predict", tmp_path / "forged", images), "Python installation", "--trust-code")
    assert not victim.exists()


def test_a_forged_config_cannot_call_what_your_own_file_imported(cli, file_run, images, tmp_path):
    run, net, _ = file_run
    victim = tmp_path / "created-by-forged-folder"
    _forge(run, tmp_path / "forged", net, "os.makedirs", {"name": str(victim)})
    assert_one_line_error(cli("predict", tmp_path / "forged", images), "not an nn.Module class or a function "
                          "defined in marked_net.py")
    assert not victim.exists()


def test_cam_output_never_overwrites_an_input_image(cli, run_dir, tmp_path):
    folder = tmp_path / "pics"
    save_png(folder / "x.gradcam.png", np.zeros((32, 32, 3), dtype=np.uint8))
    save_png(folder / "x.png", np.zeros((32, 32, 3), dtype=np.uint8))
    before = (folder / "x.gradcam.png").read_bytes()
    assert_one_line_error(cli("predict", run_dir, folder, "--cam", folder), "overwrite the input image")
    assert (folder / "x.gradcam.png").read_bytes() == before
