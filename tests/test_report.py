"""`cifarlab report`: a tiny real study (2 experiments x 2 seeds on generated images) rendered to HTML and
Markdown; the statistics checked against hand-computed values; bad folders each with their own test."""
from __future__ import annotations

import ast
import base64
import contextlib
import io
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarlab.cli import main
from cifarlab.report.insights import effect_sentence, insights, noise_verdict
from cifarlab.report.study import Experiment
from cifarlab.store import RunRecord, Store

EXPERIMENTS = {  # name -> (model options, description)
    "baseline": ({}, "s8-net as given"),
    "wide": ({"width": 40}, "wider channels (width 40)"),
}
SEEDS = (0, 1)


# ---------------------------------------------------------------------------------------------
# Fixtures: a generated image-folder dataset and a real two-experiment study on it


def make_image_folder(root: Path, n_train: int = 30, n_test: int = 10) -> Path:
    """train/<class>/*.png and test/<class>/*.png: noise around a class colour, so a net can learn a little."""
    from cifarlab.data import CLASSES

    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            tint = np.array([label * 25, 255 - label * 25, (label * 70) % 256], dtype=np.float64)
            for i in range(n):
                img = np.clip(tint + rng.normal(0, 60, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{i:03d}.png")
    return root


def build_study(folder: Path, data_root: Path, experiments=EXPERIMENTS, seeds=SEEDS) -> Path:
    """Train every (experiment, seed) for 2 epochs on 200 images and record it in `folder/store.sqlite`."""
    from cifarlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig, to_dict
    from cifarlab.data import load_cifar10, make_splits
    from cifarlab.experiment import run_experiment

    splits = make_splits(load_cifar10(data_root), subset=200)
    folder.mkdir(parents=True, exist_ok=True)
    with Store(folder) as store:
        for exp, (options, _) in experiments.items():
            for seed in seeds:
                cfg = RunConfig(data=DataConfig(root=str(data_root), subset=200),
                                model=ModelConfig("s8-net", options),
                                train=TrainConfig(epochs=2, batch_size=64, seed=seed, device="cpu"))
                run_dir = f"{exp}/seed-{seed}"
                history = run_experiment(cfg, folder / run_dir, data=splits, log=None)
                store.record(RunRecord.of_run(exp, seed, run_dir, to_dict(cfg), history.rows, history.meta))
        store.set_meta(name="tiny-study", experiments=list(experiments), baseline="baseline",
                       descriptions={k: v[1] for k, v in experiments.items()}, spec="[study]\nname = 'tiny-study'\n",
                       budget={"max_params": 100_000, "max_epochs": 2}, val=0)
    return folder


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def study(tmp_path_factory, data_root) -> Path:
    return build_study(tmp_path_factory.mktemp("study"), data_root)


@pytest.fixture(scope="module")
def report(study, data_root) -> tuple[Path, Path]:
    """`cifarlab report STUDY --data DATA`, as a user runs it (the report never reads the data root a study recorded)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["report", str(study), "--data", str(data_root)]) == 0
    assert "report.html" in out.getvalue()
    return study / "report.html", study / "report.md"


@pytest.fixture(scope="module")
def records(study) -> list[RunRecord]:
    with Store(study, create=False) as store:
        return store.runs()


class _Tables(HTMLParser):
    """Every <table> as a list of rows of cell texts (header row first)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.tables[-1][-1].append("".join(self.cell).strip())
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def tables(html_text: str) -> list[list[list[str]]]:
    parser = _Tables()
    parser.feed(html_text)
    return parser.tables


# ---------------------------------------------------------------------------------------------
# The report of a real study


def test_report_writes_html_and_markdown_with_relative_images(study, report):
    html_path, md_path = report
    assert html_path == study / "report.html" and html_path.is_file()
    assert md_path == study / "report.md" and md_path.is_file()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md_path.read_text())
    assert links, "the markdown report links no figures"
    for link in links:
        assert link.startswith("report-files/") and link.endswith(".png")
        assert (study / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_comparison_table_shows_mean_over_seeds_of_final_test_accuracy(report, records):
    html_text = report[0].read_text()
    header, *rows = tables(html_text)[0]
    assert header[:3] == ["experiment", "n", "test acc %"]
    assert [r[0] for r in rows] == [name + desc for name, (_, desc) in EXPERIMENTS.items()]  # name, description
    by_name = dict(zip(EXPERIMENTS, rows))
    for exp in EXPERIMENTS:
        accs = [r.test_acc for r in records if r.experiment == exp]
        row = by_name[exp]
        assert row[1] == str(len(SEEDS))
        mean_text, std_text = row[2].split("\u00b1")
        assert float(mean_text) == pytest.approx(100 * np.mean(accs), abs=0.005 + 1e-9)
        assert float(std_text) == pytest.approx(100 * np.std(accs, ddof=1), abs=0.005 + 1e-9)
        gaps = [r.train_acc - r.test_acc for r in records if r.experiment == exp]
        gap_mean = float(row[header.index("gap (pts)")].split("\u00b1")[0])
        assert gap_mean == pytest.approx(100 * np.mean(gaps), abs=0.005 + 1e-9)


def test_html_is_self_contained_and_every_image_is_an_embedded_png(report):
    html_text = report[0].read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html_text, re.I)
    assert "<script" not in html_text.lower() and "<link" not in html_text.lower()
    assert "@import" not in html_text and "url(" not in html_text
    sources = re.findall(r"<img\b[^>]*\bsrc=\"([^\"]+)\"", html_text)
    assert len(sources) == len(re.findall(r"<img\b", html_text)) >= 1 + 3 * len(EXPERIMENTS)
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as img:
            assert img.format == "PNG" and img.size[0] > 100


def test_insights_compare_the_variant_with_the_baseline(report):
    html_text = report[0].read_text()
    section = html_text.split('id="insights"', 1)[1].split("<h2", 1)[0]
    assert "<strong>wide</strong>" in section
    assert re.search(r"(raises|lowers|leaves) test accuracy", section)
    assert "n=2 seeds each" in section and "Welch p" in section


def test_headline_is_the_final_epoch_and_best_epoch_is_labelled(report):
    html_text = report[0].read_text()
    assert "best test epoch (optimistic, for reference only)" in html_text
    assert "No epoch or checkpoint is selected on the test set" in html_text


def test_report_handles_a_100_image_test_set_with_error_grids(report):
    html_text = report[0].read_text()
    assert html_text.count("most confident mistakes") == len(EXPERIMENTS)
    assert "confusion matrix" in html_text


def _cifarlab_imports(module: str) -> set[str]:
    """cifarlab modules that `module`'s source imports anywhere (lazy imports inside functions included)."""
    import cifarlab

    base = Path(cifarlab.__file__).parent
    rel = Path(*module.split(".")[1:])
    path = base / rel / "__init__.py" if (base / rel).is_dir() else base / rel.with_suffix(".py")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    def exists(name: str) -> bool:
        rel = Path(*name.split(".")[1:])
        return (base / rel).is_dir() or (base / rel).with_suffix(".py").is_file()
    return {m for m in found if m.startswith("cifarlab.") and exists(m)}


def test_report_never_imports_the_trainer():
    seen, todo = set(), ["cifarlab.report", "cifarlab.cli.report"]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(_cifarlab_imports(module))
    assert "cifarlab.report.build" in seen and "cifarlab.data" in seen  # the walk follows lazy imports
    assert not seen & {"cifarlab.train", "cifarlab.experiment"}


def test_report_without_the_dataset_still_renders_and_says_so(study, tmp_path):
    from cifarlab.report import build_report, load_study
    from cifarlab.report.doc import render_html

    page = render_html(build_report(load_study(study), data_root=str(tmp_path / "nowhere")))
    assert page.count("Misclassified images: unavailable") == len(EXPERIMENTS)
    assert "comparison" in page


@pytest.mark.parametrize("recorded", [True, False], ids=["layers.json", "registry model rebuilt"])
def test_layer_table_is_the_one_cifarlab_inspect_prints(study, records, tmp_path, recorded):
    from cifarlab.analysis import format_table, layer_table
    from cifarlab.models import create_model
    from cifarlab.report.doc import Document, render_markdown
    from cifarlab.report.layers import layer_table_blocks

    config = records[0].config
    run_dir = study / records[0].run_dir if recorded else tmp_path  # tmp_path: a run from before layers.json
    assert (run_dir / "layers.json").is_file() == recorded
    blocks = layer_table_blocks(run_dir, config)
    table = blocks[0]
    align = {c.name: c.align for c in table.columns}
    assert (align["layer"], align["output"], align["params"], align["R_out"]) == ("l", "l", "r", "r")
    params = [int(row[list(align).index("params")].replace(",", "")) for row in table.rows]
    assert sum(params) == records[0].params
    # Same cells and totals as `cifarlab inspect MODEL --format markdown`; only the alignment rule differs.
    inspect = format_table(layer_table(create_model(config["model"]["name"], **config["model"]["options"])),
                           "markdown").splitlines()
    markdown = render_markdown(Document("t", [], blocks), "files")[0]
    report = markdown[markdown.index("| layer"):].strip().splitlines()
    unescaped = [re.sub(r"\\([_*`<>\[\]#])", r"\1", line) for line in report]  # report.md escapes what it writes
    assert unescaped[:1] + unescaped[2:] == inspect[:1] + inspect[2:]


def test_layer_table_of_a_model_no_longer_registered_becomes_a_note():
    from cifarlab.report.doc import Para
    from cifarlab.report.layers import layer_table_blocks

    [note] = layer_table_blocks(Path("nowhere"), {"model": {"name": "retired-net", "options": {}}})
    assert isinstance(note, Para) and note.kind == "note"
    assert note.text.startswith("Layer table unavailable (ConfigError: unknown model 'retired-net'")


def test_a_bug_in_the_analysis_is_not_hidden_in_a_note(records, monkeypatch, tmp_path):
    import cifarlab.analysis
    from cifarlab.report.layers import layer_table_blocks

    def broken(model, input_shape):
        raise TypeError("a bug")

    monkeypatch.setattr(cifarlab.analysis, "layer_table", broken)
    with pytest.raises(TypeError, match="a bug"):
        layer_table_blocks(tmp_path, records[0].config)


def test_a_report_never_imports_a_model_file_named_in_a_study_folder(tmp_path):
    from cifarlab.report.doc import Para
    from cifarlab.report.layers import layer_table_blocks

    marker = tmp_path / "ran"
    hostile = tmp_path / "net.py"
    hostile.write_text(f"open({str(marker)!r}, 'w').close()\n")
    [note] = layer_table_blocks(tmp_path, {"model": {"name": f"{hostile}:Net", "options": {}}})
    assert isinstance(note, Para) and "does not run a study's model files" in note.text
    assert not marker.exists()
    (tmp_path / "layers.json").write_text("{not json")
    [note] = layer_table_blocks(tmp_path, {"model": {"name": f"{hostile}:Net", "options": {}}})
    assert "layers.json is unreadable" in note.text and not marker.exists()


def test_a_row_with_a_cell_too_many_is_refused():
    from cifarlab.report.doc import Column, Table

    with pytest.raises(ValueError, match="need 2 cells"):
        Table([Column("experiment", "l"), Column("n")], [["bn", "3"], ["ln", "3", "extra"]])


def test_report_shows_each_models_layer_table(report):
    page = report[0].read_text()
    details = re.findall(r"<details>.*?</details>", page, re.S)
    assert len(details) == len(EXPERIMENTS)
    for d in details:
        header = tables(d)[0][0]
        assert "params" in header and any(c.startswith("R") for c in header)  # receptive field column


# ---------------------------------------------------------------------------------------------
# Folders that cannot be reported on: one line on stderr, exit 2, nothing written


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cifarlab report: error: ")
    return err


def test_folder_without_store_is_an_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "store" in _one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_missing_folder_is_an_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "absent")]) == 2
    _one_line_error(capsys)


def test_store_without_runs_is_an_error(tmp_path, capsys):
    with Store(tmp_path) as store:
        store.set_meta(name="empty", experiments=["baseline"], baseline="baseline")
    assert main(["report", str(tmp_path)]) == 2
    assert "no finished runs" in _one_line_error(capsys)
    assert not (tmp_path / "report.html").exists()


@pytest.mark.parametrize("content", [b"this is not a database" * 100, b""], ids=["garbage", "empty-file"])
def test_corrupt_store_is_an_error_and_left_untouched(tmp_path, capsys, content):
    path = tmp_path / "store.sqlite"
    path.write_bytes(content)
    assert main(["report", str(tmp_path)]) == 2
    assert "store.sqlite" in _one_line_error(capsys)
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.sqlite"]


# ---------------------------------------------------------------------------------------------
# Insight sentences


def _experiment(name: str, test: list[float], train: list[float], params: int = 50_000, desc: str = "") -> Experiment:
    runs = [RunRecord(name, seed, f"{name}/seed-{seed}", "s8-net", params, 20, 60.0, 1.0, "cpu",
                      history=[{"epoch": 20, "test_acc": te, "train_acc": tr}])
            for seed, (te, tr) in enumerate(zip(test, train))]
    return Experiment(name, desc, runs)


def test_effect_sentence_beyond_seed_noise():
    base = _experiment("baseline", [0.70, 0.72, 0.74], [0.90, 0.90, 0.90])
    bn = _experiment("bn", [0.76, 0.77, 0.78], [0.86, 0.87, 0.88], desc="batch norm")
    text = effect_sentence(bn, base)
    # Welch: t = 0.05 / sqrt((1e-4 + 4e-4) / 3) = 3.873, df = 2.94, p = 0.0316
    assert text.startswith("**bn** (batch norm) raises test accuracy by 5.0 points (72.0% \u2192 77.0%, "
                           "n=3 seeds each, Welch p=0.032")
    assert "beyond seed noise" in text
    assert "narrows the train-test gap from 18.0 to 10.0 points" in text


def test_negative_gaps_go_up_or_down_rather_than_narrow():
    # Train accuracy on augmented batches can sit below test accuracy; "narrows" would mislead.
    base = _experiment("baseline", [0.62, 0.63, 0.64], [0.61, 0.61, 0.62])
    ln = _experiment("ln", [0.50, 0.51, 0.52], [0.48, 0.485, 0.49])
    assert "lowers the train-test gap from -1.7 to -2.5 points" in effect_sentence(ln, base)


def test_effect_sentence_within_seed_noise_and_parameter_cost():
    base = _experiment("baseline", [0.70, 0.72, 0.74], [0.8, 0.8, 0.8])
    wide = _experiment("wide", [0.71, 0.73, 0.72], [0.8, 0.8, 0.8], params=100_000)
    text = effect_sentence(wide, base)
    assert "Welch p=1.00: within seed noise" in text
    assert "It uses 2.00\u00d7 the parameters (100,000 vs 50,000)." in text


def test_single_seed_cannot_be_separated_from_noise():
    base, other = _experiment("baseline", [0.70], [0.9]), _experiment("dropout", [0.75], [0.8])
    assert noise_verdict([0.75], [0.70]) == "cannot be separated from seed noise with a single seed"
    text = effect_sentence(other, base)
    assert "n=1 seed each, cannot be separated from seed noise" in text


def test_insights_for_single_seed_study():
    from cifarlab.report.study import Study
    import datetime as dt

    study = Study(Path("."), "s", [_experiment("baseline", [0.7], [0.9]), _experiment("x", [0.8], [0.9])],
                  "baseline", "", {}, 0, dt.datetime.now())
    lines = insights(study)
    assert any("**x**" in line for line in lines)
    assert "no difference can be separated from seed noise" in lines[-1]
