"""`cifarlab report RUN_DIR`: one run folder's report, drawn by the study report's own code.

A course-style model file (log-softmax, norm by string, a residual add, AdaptiveAvgPool2d) is trained
into a run folder; its report shows the curves, the 10 most confident mistakes in a 5x2 grid, the
confusion matrix, per-class accuracy, the layer table, the config and the model's source, which is
read as text and never run. Damage gives notes, or one line when nothing is left to report on.
"""
from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_cli import assert_one_line_error
from test_own_model import NET, write

from cifarlab.report.build import RUN_MISTAKES

pytestmark = pytest.mark.usefixtures("single_thread")

TRAIN = ("--device", "cpu", "--compile", "off", "--augment", "none", "--batch-size", "16", "--epochs", "2")


@pytest.fixture
def data(make_folder):
    """60 training and 30 test images: a 2-epoch run gets more than 10 of the 30 wrong."""
    return make_folder(n_train=6, n_test=3).root


@pytest.fixture
def run(cli, data, tmp_path) -> Path:
    """A finished run of a course-style model file."""
    net = write(tmp_path / "course", "mynet.py", NET)
    out = tmp_path / "runs" / "mine"
    result = cli("train", "--model", f"{net}:Net", "--norm", "gn", "--data", data, "--out", out, *TRAIN)
    assert result.code == 0, result.err
    return out


def report(cli, folder: Path, data: Path | None = None):
    return cli("report", folder, *(("--data", data) if data else ()))


def test_a_run_report_shows_curves_mistakes_confusion_classes_layers_config_and_source(cli, run, data):
    result = report(cli, run, data)
    assert result.code == 0, result.err
    assert result.out.splitlines() == [f"report: {run / 'report.html'}", f"        {run / 'report.md'}"]
    md = (run / "report.md").read_text()
    html = (run / "report.html").read_text()
    assert sorted(p.name for p in (run / "report-files").iterdir()) == ["run-confusion.png", "run-curves.png",
                                                                       "run-mistakes.png"]
    for heading in ("## Run", "## Per-class accuracy", "## Config", "## Model source"):
        assert heading in md
    assert "| seed | test acc % | train acc % |" in md  # the study report's per-seed table, one row
    assert re.search(r"The 10 most confident mistakes \(of \d+\) of seed 0, the only seed", md)
    assert "| **mine** |" in md  # per-class accuracy
    assert "| c1 | Conv2d | 3 | 1 | 1 | 1 | 32 | 32 |" in md  # the layer table, from layers.json
    assert '"norm": "gn"' in md and "AdaptiveAvgPool2d" in md
    # The source shown is the copy the run trained, character for character, escaped in the HTML.
    source = (run / "model_source.py").read_text()
    assert source.strip() in md
    assert "def forward(self, x):" in html and "x = x + self.c2(x)" in html and "&gt;" not in source
    # 10 mistakes, 5 per row: two rows of five cells, each the image and its Grad-CAM maps (cams.npz).
    assert (RUN_MISTAKES.count, RUN_MISTAKES.cols, RUN_MISTAKES.cam_cols) == (10, 5, 5)
    assert "Grad-CAM at layer" in md
    assert _size(run / "report-files" / "run-mistakes.png") == _grid_size(_cam_grid_png(1), 5, 2)
    # A run without the maps gets the plain grid, also 5x2.
    (run / "cams.npz").unlink()
    assert report(cli, run, data).code == 0
    assert _size(run / "report-files" / "run-mistakes.png") == _grid_size(_grid_png(1), 5, 2)


def _size(path: Path) -> tuple[int, int]:
    return Image.open(io.BytesIO(path.read_bytes())).size


def _grid_size(single_png: bytes, cols: int, rows: int) -> tuple[int, int]:
    """The size of a grid of `cols` x `rows` cells, from the size of a grid of one."""
    width, height = Image.open(io.BytesIO(single_png)).size
    return cols * width, rows * height


def _grid_png(n: int) -> bytes:
    from cifarlab.report.figures import mistakes_grid

    return mistakes_grid(np.zeros((n, 32, 32, 3), np.uint8), ["cat"] * n, ["dog"] * n, [0.5] * n, cols=1)


def _cam_grid_png(n: int) -> bytes:
    from cifarlab.report.gradcam import mistakes_cam_grid

    return mistakes_cam_grid(np.zeros((n, 32, 32, 3), np.uint8), ["cat"] * n, ["dog"] * n, [0.5] * n,
                             np.zeros((n, 2, 32, 32), np.float32), per_row=1)


def test_the_report_never_runs_the_model_file(cli, run, data, tmp_path):
    marker = tmp_path / "ran"
    copy = run / "model_source.py"
    copy.write_text(f"open({str(marker)!r}, 'w').close()\n" + copy.read_text())
    net = tmp_path / "course" / "mynet.py"
    net.write_text(f"open({str(marker)!r}, 'w').close()\n" + net.read_text())
    (run / "layers.json").unlink()  # nor is the model rebuilt for its layer table
    result = report(cli, run, data)
    assert result.code == 0, result.err
    assert not marker.exists()
    md = (run / "report.md").read_text()
    assert "Layer table unavailable" in md and f"open({str(marker)!r}" in md


def test_a_registry_model_run_has_no_source_section(cli, data, tmp_path):
    out = tmp_path / "run"
    assert cli("train", "--data", data, "--out", out, "-O", "width=8", *TRAIN).code == 0
    assert report(cli, out, data).code == 0
    md, html = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert "## Model source" not in md and "model_source.py" not in html and "## Config" in md


@pytest.mark.parametrize("damage", ["predictions-truncated", "predictions-garbage", "layers-garbage",
                                    "source-missing"])
def test_damage_to_a_file_makes_that_part_unavailable_and_the_report_goes_on(cli, run, data, damage):
    what, how = damage.split("-")
    path = run / {"predictions": "predictions.npz", "layers": "layers.json", "source": "model_source.py"}[what]
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:300])
    elif how == "garbage":
        path.write_bytes(b"\x00not what cifarlab writes" * 10)
    else:
        path.unlink()
    result = report(cli, run, data)
    assert result.code == 0, result.err
    md = (run / "report.md").read_text()
    needle = {"predictions": "Misclassified images: unavailable", "layers": "Layer table unavailable",
              "source": "is missing from the run folder"}[what]
    assert needle in md
    if what == "predictions":
        assert "Confusion matrix: unavailable" in md and "## Per-class accuracy" not in md


@pytest.mark.parametrize("damage, needle", [
    ("history-garbage", "history.json' is unreadable (JSONDecodeError)"),
    ("history-no-test-accuracy", "its last history row lacks test_acc"),
    ("history-a-list", "history.json' is not what a run writes"),
    ("config-not-a-table-of-tables", "its config is not a table of tables"),
])
def test_damage_that_leaves_nothing_to_report_on_is_one_line(cli, run, data, damage, needle):
    history = json.loads((run / "history.json").read_text())
    if damage == "history-garbage":
        (run / "history.json").write_text("{not json")
    elif damage == "history-no-test-accuracy":
        for row in history["epochs"]:
            del row["test_acc"]
        (run / "history.json").write_text(json.dumps(history))
    elif damage == "history-a-list":
        (run / "history.json").write_text(json.dumps(history["epochs"]))
    else:
        config = json.loads((run / "config.json").read_text())
        config["train"] = 3
        (run / "config.json").write_text(json.dumps(config))
    assert_one_line_error(report(cli, run, data), needle)
    assert not (run / "report.html").exists() and not (run / "report-files").exists()


def test_an_interrupted_run_is_reported_as_far_as_it_got(cli, data, tmp_path):
    out = tmp_path / "cut"
    import cifarlab.experiment as experiment

    real = experiment.write_history
    calls = []

    def interrupt_after_one(*args, **kwargs):
        real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt

    experiment.write_history = interrupt_after_one
    try:
        assert cli("train", "--data", data, "--out", out, "-O", "width=8", *TRAIN).code == 130
    finally:
        experiment.write_history = real
    kept = tmp_path / "cut.incomplete"
    result = report(cli, kept, data)
    assert result.code == 0, result.err
    md = (kept / "report.md").read_text()
    assert "an interrupted run: 1 of 2 epochs finished" in md
    assert "Misclassified images: unavailable" in md  # no predictions.npz yet


def test_report_tells_a_run_folder_from_a_study_folder_by_what_it_holds(cli, data, tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text(f"""name = "s"
[data]
root = "{data}"
[model]
options = {{ width = 8 }}
[train]
epochs = 1
batch_size = 16
augment = "none"
device = "cpu"
compile = "off"
[[experiments]]
name = "a"
""")
    folder = tmp_path / "study"
    assert cli("study", spec, "--out", folder).code == 0
    assert report(cli, folder, data).code == 0
    assert "## Comparison" in (folder / "report.md").read_text()  # the study report
    run = folder / "a" / "seed-0"
    assert report(cli, run, data).code == 0
    md = (run / "report.md").read_text()
    assert "## Run" in md and "## Comparison" not in md
    # A folder that is neither: one line naming what each kind holds, nothing written.
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text("{}")
    assert_one_line_error(report(cli, other, data), "holds no study store (store.sqlite), nor a run (config.json "
                                                    "and history.json), nor a sweep (sweep.json)")
    assert sorted(p.name for p in other.iterdir()) == ["config.json"]
    shutil.rmtree(other)
