"""bench/tables.py: a results folder becomes the Markdown tables of BENCHMARKS.md, from its raw files only."""
from __future__ import annotations

import importlib.util
import re
import sys
import tarfile
from pathlib import Path

import pytest

from cifarlab.study import load_spec, run_study

REPO = Path(__file__).resolve().parent.parent
H100 = REPO / "bench" / "results" / "2026-11-27-h100"
pytestmark = pytest.mark.usefixtures("single_thread")


def _tables():
    spec = importlib.util.spec_from_file_location("bench_tables", REPO / "bench" / "tables.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def h100(tmp_path_factory):
    tables = _tables()
    return tables, tables.load(H100, tmp_path_factory.mktemp("h100"))


def test_h100_study_rows_agree_with_the_summary_printed_on_the_gpu_machine(h100):
    tables, res = h100
    # summary.txt: "bn  5  -  87.01+/-0.34 88.16+/-0.19 88.61+/-0.16 87.83+/-0.11  22.8  30.2" per experiment
    printed = {}
    for block in (H100 / "summary.txt").read_text().split("\n## ")[1:]:
        name = block.split()[0]
        for line in block.splitlines()[2:]:
            exp, n, _val, *figures = line.split()
            printed[(name, exp)] = [n, *(f.replace("+/-", " +/- ") for f in figures)]
    shown = {}
    for name in ("budget", "normalization"):
        header, rows = tables.study_table(res, name)
        for row in rows:
            shown[(name, row[0].strip("*"))] = [str(row[2]), *row[3:]]
    assert shown == printed and len(shown) == 6


def test_h100_targets_state_each_gap(h100):
    tables, res = h100
    gaps = {row[0]: (row[4], row[5]) for row in tables.target_rows(res)}
    assert gaps["budget-net BN (budget study), single view >= 87.5%"] == ("-0.49 pts", "**no**")
    assert gaps["budget-net BN (budget study), flip TTA >= 88.5%"] == ("-0.34 pts", "**no**")
    assert gaps["budget-net GN (budget study), flip TTA >= 86.5%"] == ("-0.02 pts", "**no**")
    assert gaps["budget-net LN (budget study), flip TTA >= 86.5%"] == ("-0.42 pts", "**no**")
    assert gaps["s8-net BN (s8-default), single view >= 80.0%"] == ("+3.57 pts", "yes")
    assert gaps["budget-net BN, one 20-epoch run <= 2.0 s of training"] == ("+5.2 s (3.6x)", "**no**")
    assert gaps["s8-net, 20 epochs <= 4.0 s of training"] == ("+23.2 s (6.8x)", "**no**")
    assert gaps["normalisation study, 3 norms x 5 seeds < 60 s including compilation"] == ("not comparable", "**no**")


def test_h100_profile_rows_use_the_tables_not_the_over_counting_first_lines(h100):
    tables, res = h100
    rows = {row[0]: row[1:] for row in tables.profile_rows(res)}
    # steps, kernel ms/step, launches/step, conv share, wall on (median), wall off = 14.3 s / (20 x 97) steps
    assert rows["budget-on"] == [40, "**1.35**", "215", "54%", "13.51", "7.37"]
    assert rows["s8-on"] == [40, "**1.02**", "245", "61%", "15.32", "6.97"]


def test_benchmarks_md_holds_the_tables_as_printed(capsys):
    assert _tables().main([str(H100.relative_to(REPO))]) == 0
    printed = capsys.readouterr().out
    assert printed.strip() in (REPO / "BENCHMARKS.md").read_text()


def test_a_fresh_results_folder_shows_its_studies_and_hides_test_accuracy_of_a_validation_study(
        tmp_path, make_folder):
    data = make_folder(n_train=4, n_test=2).root
    work, results = tmp_path / "work", tmp_path / "results"
    results.mkdir()
    for name, val in (("plain", 0), ("tune", 10)):
        spec = tmp_path / f"{name}.toml"
        spec.write_text(f'name = "{name}"\n[data]\nroot = "{data}"\nval = {val}\n[model]\nname = "s8-net"\n'
                        '[train]\nepochs = 1\nbatch_size = 8\naugment = "none"\n'
                        '[[experiments]]\nname = "bn"\n[[experiments]]\nname = "ln"\n'
                        'model = { options = { norm = "ln" } }\n')
        run_study(load_spec(spec), out=work / name, seeds=2, log=lambda s: None)
        with tarfile.open(results / f"{name}.tgz", "w:gz") as tar:
            tar.add(work / name, arcname=name)
    (results / "plain.log").write_text("study 'plain': 4 runs -> x\ndone in 12s; report: ...\n")
    (results / "session.toml").write_text('date = "2026-12-01"\ncommit = "abc1234"\ndevice = "1x Test GPU"\n'
                                          'software = "PyTorch 2.x"\ndata = "tiny"\n'
                                          '[commands]\nplain = "cifarlab study plain.toml --seeds 2"\n')
    tables = _tables()
    text = tables.render(tables.load(results, tmp_path / "scratch"), "python bench/tables.py results")
    assert "Measured 2026-12-01 on 1x Test GPU (PyTorch 2.x), main at `abc1234`" in text
    assert "`cifarlab study plain.toml --seeds 2`, 12 s of wall time." in text
    assert "(command not recorded)." in text  # tune has none: said, not invented
    plain = text[text.index("### Study `plain`"):text.index("### Study `tune`")]
    tune = text[text.index("### Study `tune`"):]
    assert "| test % | flip TTA % |" in plain and re.search(r"\| \*\*ln\*\* \|  \| 2 \| \d", plain)
    assert "val %" in tune and "test %" not in tune


def test_a_folder_without_session_toml_is_refused(tmp_path, capsys):
    assert _tables().main([str(tmp_path)]) == 2
    assert "usage" in capsys.readouterr().err
