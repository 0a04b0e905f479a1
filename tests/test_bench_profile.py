"""bench/profile.py and bench/profile_stats.py: per-step GPU figures from a profiler window.

The saved H100 profiles (bench/results/2026-11-27-h100) are the reference: their first lines over-count,
their tables do not, and the figures below are the ones BENCHMARKS.md quotes.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
H100 = REPO / "bench" / "results" / "2026-11-27-h100"
pytestmark = pytest.mark.usefixtures("single_thread")


def _load(name: str):
    # Loaded under a name of our own: a module called `profile` would shadow the standard library's.
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


stats = _load("profile_stats")


@pytest.mark.parametrize("name, kernel_ms, launches, conv_share", [
    # Self CUDA time total / 40 steps; (cudaLaunchKernel + cuLaunchKernel + ExC + memsets) / 40.
    ("budget-on", 54.164 / 40, (3384 + 3935 + 570 + 712) / 40, (16.180 + 12.873) / 54.164),
    ("budget-eager", 65.573 / 40, (7564 + 610 + 752) / 40, (16.288 + 11.855) / 65.573),
    ("s8-on", 40.774 / 40, (3640 + 4160 + 1000 + 1000) / 40, (18.084 + 6.952) / 40.774),
])
def test_saved_h100_tables_give_kernel_time_and_launches_per_step(name, kernel_ms, launches, conv_share):
    s = stats.from_table_text((H100 / f"profile-{name}.txt").read_text())
    assert s.steps == 40
    assert s.kernel_ms_per_step == pytest.approx(kernel_ms)
    assert s.launches_per_step == pytest.approx(launches)
    assert s.conv_share == pytest.approx(conv_share)
    assert s.graph_launches == 0  # --compile on and off: no CUDA graphs


def test_a_table_without_gpu_times_is_refused():
    cpu_only = ("-----  -----\n      Name  Self CPU %  Self CPU  # of Calls\n-----  -----\n"
                "aten::mm  50.00%  1.000ms  4\n-----  -----\nSelf CPU time total: 2.000ms\n")
    with pytest.raises(ValueError, match="Self CUDA time total"):
        stats.from_table_text(cpu_only)


@pytest.mark.parametrize("first, last, spe, ends", [
    (259, 298, 97, [3]),   # the saved budget-net windows hold epoch 3's evaluation
    (259, 298, 195, []),   # the saved s8-net window does not
    (210, 249, 97, []),    # the default window, budget-net at batch 512
    (210, 249, 195, []),   # the default window, s8-net at batch 256
    (0, 200, 50, [1, 2, 3, 4]),
])
def test_windows_holding_an_epoch_end_are_found(first, last, spe, ends):
    assert _load("profile").epoch_ends_in(first, last, spe) == ends


def test_cpu_profile_of_a_short_run_records_the_chosen_window(tmp_path, tiny_folder, capsys):
    profile = _load("profile")
    out_json = tmp_path / "p.json"
    # 60 images at batch 8: 7 steps per epoch; steps 9-11 lie inside epoch 2, epoch 3 comes after.
    args = profile.parse_args(["--name", "tiny", "--skip", "8", "--warmup", "1", "--steps", "3", "--cpu",
                               "--json", str(out_json), "--", "--data", str(tiny_folder.root),
                               "--model", "s8-net", "--epochs", "3", "--batch-size", "8"])
    assert profile.run(args) == 0
    report = json.loads(out_json.read_text())
    assert report["window"] == [9, 11] and report["steps_per_epoch"] == 7
    assert report["epoch_ends_in_window"] == [] and report["summary"] is None
    assert report["wall_ms_profiled"] > 0 and report["wall_ms_unprofiled"] > 0
    printed = capsys.readouterr().out
    assert "training steps 9-11 recorded (3)" in printed and "GPU not profiled (--cpu)" in printed


def test_a_run_shorter_than_the_window_is_an_error(tiny_folder, capsys):
    profile = _load("profile")
    args = profile.parse_args(["--skip", "100", "--cpu", "--", "--data", str(tiny_folder.root),
                               "--model", "s8-net", "--epochs", "1", "--batch-size", "8"])
    assert profile.run(args) == 2
    assert "the run took 7 optimiser steps; the window needs 150" in capsys.readouterr().err


def test_without_cuda_it_says_so_in_one_line(tiny_folder, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    profile = _load("profile")
    assert profile.run(profile.parse_args(["--", "--data", str(tiny_folder.root)])) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs CUDA" in err
