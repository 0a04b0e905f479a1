"""cifarlab study --storage URL: workers on several machines share one study; each run is done once, and
the report reads the runs back from the database."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_image_folder
from postgres import postgres_url  # noqa: F401 - a fixture

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.postgres


def test_three_workers_do_each_run_once_and_the_report_reads_them_back(tmp_path, postgres_url, cli):
    write_image_folder(tmp_path / "data", n_train=12, n_test=3)
    spec = tmp_path / "s.toml"
    spec.write_text(f"""
name = "shared"
seeds = 2
[data]
root = "{tmp_path / 'data'}"
[model]
name = "s8-net"
options = {{ width = 8 }}
[train]
epochs = 1
batch_size = 30
augment = "none"
device = "cpu"
compile = "off"
[[experiments]]
name = "bn"
baseline = true
[[experiments]]
name = "gn"
model = {{ options = {{ norm = "gn" }} }}
""")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "CIFARLAB_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "cifarlab", "study", str(spec), "--out", str(tmp_path / f"m{i}"),
                               "--storage", postgres_url], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for i in range(3)]  # three folders, as on three machines
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], logs

    started = [line.split(": started")[0] for log in logs for line in log.splitlines() if ": started by" in line]
    runs = {f"{e} seed {s}" for e in ("bn", "gn") for s in range(2)}
    assert sorted(started) == sorted(runs)  # every run once, by one worker
    folders = [tmp_path / f"m{i}" / e / f"seed-{s}" for i in range(3) for e in ("bn", "gn") for s in range(2)]
    assert sum(f.is_dir() for f in folders) == 4
    assert not any((tmp_path / f"m{i}" / "store.sqlite").exists() for i in range(3))  # the database is the store

    again = cli("study", spec, "--out", tmp_path / "m0", "--storage", postgres_url)
    assert again.code == 0 and "4 already finished" in again.out and "started by" not in again.out

    res = cli("report", tmp_path / "m0", "--storage", postgres_url)
    assert res.code == 0, res.err
    md = (tmp_path / "m0" / "report.md").read_text()
    assert "| **bn** (baseline) | 2 |" in md and "| **gn** | 2 |" in md
