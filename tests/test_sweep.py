"""cifarlab sweep: spec errors before anything runs, pruning, trials that never see the test set, the winner's
final seeds, the report, the journal file resumed after a kill, and a PostgreSQL and a Redis search each shared
by three workers one of which is killed mid-trial. Tiny runs: s8-net width 8 on a few hundred generated images,
CPU."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import save_png, write_image_folder
from postgres import free_port, postgres_url  # noqa: F401 - a fixture
from redis_server import PASSWORD, redis_url  # noqa: F401 - a fixture
from cifarlab.data import CLASSES

optuna = pytest.importorskip("optuna", reason="the [sweep] extra is not installed")
from optuna.trial import TrialState  # noqa: E402

from cifarlab.sweep import load_sweep_spec  # noqa: E402
from cifarlab.sweep.results import open_existing
from cifarlab.sweep.run import run_sweep  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("single_thread")

HOPELESS_LR = 1e-7  # learns nothing in a few epochs: validation accuracy stays where initialisation put it


def make_data(root: Path, n_train: int = 20, n_test: int = 4, seed: int = 0) -> Path:
    """train/<class>/*.png that a tiny net can learn (brightness follows the class), and a small test/."""
    return write_image_folder(root, n_train, n_test, seed)


def poison_test_split(clean: Path, out: Path) -> Path:
    """A copy of `clean` with the same training images and a garbage test split (noise, classes scrambled)."""
    shutil.copytree(clean / "train", out / "train")
    rng = np.random.default_rng(99)
    for cls in CLASSES:
        for i in range(7):
            save_png(out / "test" / cls / f"{i:03d}.png", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    return out


def spec_text(data: Path, *, search: str | None = None, sweep: str = "", top: str = "", data_extra: str = "",
              train_extra: str = "", epochs: int = 3) -> str:
    search = search if search is not None else f"""
train.optim.lr = {{ type = "categorical", choices = [{HOPELESS_LR}, 0.3] }}
train.reg.label_smoothing = {{ type = "float", low = 0.0, high = 0.2 }}
"""
    return f"""
name = "t"
{top}
[budget]
max_params = 50000
max_epochs = 20

[data]
root = "{data}"
val = 50
{data_extra}

[model]
name = "s8-net"
options = {{ width = 8 }}

[train]
epochs = {epochs}
batch_size = 25
augment = "none"
device = "cpu"
compile = "off"
{train_extra}

[sweep]
trials = 6
random_trials = 6  # all at random: about half the trials draw the hopeless lr
startup_trials = 2
warmup_epochs = 0
{sweep}

[search]
{search}
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def trials_of(folder: Path, url: str | None = None) -> list:
    return open_existing(folder, url).get_trials(deepcopy=False)


def env() -> dict[str, str]:
    # One intra-op thread per worker process: several workers share the machine's cores.
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "CIFARLAB_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}


def started_numbers(*logs: str) -> list[int]:
    """Trial numbers from the workers' 'trial N started' lines, in all their logs together."""
    return [int(line.split()[1]) for log in logs for line in log.splitlines()
            if line.startswith("trial ") and " started" in line]


# ---------------------------------------------------------------------------------------------
# Spec errors: one line, exit 2, naming the key, before anything runs


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_data(tmp_path_factory.mktemp("sweep-data"))


SPEC_ERRORS = {
    "unknown-path": ('train.optim.lrr = { type = "float", low = 0.1, high = 1.0 }',
                     "search.train.optim.lrr: not a setting (did you mean train.optim.lr?)"),
    "a-table": ('"train.optim" = { type = "float", low = 0.1, high = 1.0 }',
                "search.train.optim: is a table of settings"),
    "low-above-high": ('train.optim.lr = { type = "float", low = 1.0, high = 0.1 }',
                       "search.train.optim.lr.high: must be >= low"),
    "outside-the-setting": ('train.optim.lr = { type = "float", low = 0.0, high = 0.1 }',
                            "search.train.optim.lr.low: must be > 0"),
    "log-from-zero": ('train.reg.label_smoothing = { type = "float", low = 0.0, high = 0.2, log = true }',
                      "search.train.reg.label_smoothing.low: must be > 0 with log = true"),
    "bad-choice": ('train.augment = { type = "categorical", choices = ["crop", "rotate"] }',
                   "search.train.augment.choices[1]: unknown value 'rotate'"),
    "float-for-int": ('train.batch_size = { type = "float", low = 16, high = 64 }',
                      "search.train.batch_size.type: train.batch_size is a whole number"),
    "uniform-for-choices": ('train.augment = { type = "float", low = 0, high = 1 }',
                            'search.train.augment.type: train.augment takes'),
    "fractional-int": ('train.batch_size = { type = "int", low = 16.5, high = 64 }',
                       "search.train.batch_size.low: must be a whole number"),
    "unknown-type": ('train.optim.lr = { type = "normal", low = 0.1, high = 1.0 }',
                     "search.train.optim.lr.type: unknown value 'normal'"),
    "data-is-fixed": ('data.subset = { type = "int", low = 10, high = 100 }', "search.data.subset: not searchable"),
    "seed-is-fixed": ('train.seed = { type = "int", low = 0, high = 9 }', "search.train.seed: not searchable"),
    "unknown-model-option": ('model.options.wdth = { type = "int", low = 4, high = 8 }',
                             "search.model.options.wdth: model 's8-net' has no option 'wdth'"),
    "model-option-range": ('model.options.dropout = { type = "float", low = 0.0, high = 1.5 }',
                           "search.model.options.dropout.high: must be in [0, 1)"),
    "epochs-over-budget": ('train.epochs = { type = "int", low = 1, high = 30 }',
                           "search.train.epochs: 30 epochs exceed the budget of 20"),
    "not-a-distribution": ("train.optim.lr = 0.5", "search.train.optim.lr: expected a distribution"),
    "nothing-searched": ("", "search: the sweep searches nothing"),
}


@pytest.mark.parametrize("case", sorted(SPEC_ERRORS))
def test_spec_errors_are_one_line_naming_the_key(tmp_path, data, cli, case):
    body, needle = SPEC_ERRORS[case]
    spec = write(tmp_path / "s.toml", spec_text(data, search=body))
    res = cli("sweep", spec, "--out", tmp_path / "out")
    assert res.code == 2 and len(res.err_lines) == 1, res.err
    assert needle in res.err and str(spec) in res.err
    assert not (tmp_path / "out").exists()  # refused before anything was created


@pytest.mark.parametrize("text, needle", [
    ("[sweep]\npruner = \"asha\"\n", "sweep.pruner: unknown value 'asha'"),
    ("[data]\nval = 0\n", "data.val: a sweep chooses on a validation split"),
    ("[[experiments]]\nname = \"a\"\n", "experiments: a sweep spec has [search]"),
])
def test_sweep_options_and_validation_split_are_checked(tmp_path, data, cli, text, needle):
    spec = tmp_path / "s.toml"
    base = spec_text(data)
    if text.startswith("[data]"):
        base = base.replace("val = 50", "val = 0")
    elif text.startswith("[sweep]"):
        base = base.replace("[sweep]\n", "[sweep]\npruner = \"asha\"\n")
    else:
        base += text
    spec.write_text(base)
    res = cli("sweep", spec, "--out", tmp_path / "out")
    assert res.code == 2 and len(res.err_lines) == 1 and needle in res.err, res.err


def test_only_postgresql_and_redis_urls_are_accepted(tmp_path, data, cli):
    spec = write(tmp_path / "s.toml", spec_text(data))
    res = cli("sweep", spec, "--out", tmp_path / "out", "--storage", "mysql://u:secret@db/x")
    assert res.code == 2 and len(res.err_lines) == 1 and "is not a postgresql:// or redis:// URL" in res.err
    assert "secret" not in res.err  # passwords never reach a log line


def test_shipped_sweep_specs_parse_and_fit_their_budgets():
    from cifarlab.models import check_budget, create_model

    specs = sorted((REPO / "studies" / "tune").glob("*.toml"))
    assert {p.stem for p in specs} >= {"budget-bn", "budget-gn", "budget-ln", "s8-bn", "s8-gn", "s8-ln"}
    for path in specs:
        spec = load_sweep_spec(path)
        cfg = spec.config({})
        assert cfg.data.val > 0
        check_budget(create_model(cfg.model.name, **cfg.model.options), spec.budget.max_params)


# ---------------------------------------------------------------------------------------------
# One search, in-process: pruning, failures, the test set, final seeds, the report


@pytest.fixture(scope="module")
def clean_sweep(tmp_path_factory, data) -> Path:
    tmp = tmp_path_factory.mktemp("clean-sweep")
    spec = load_sweep_spec(write(tmp / "s.toml", spec_text(data)))
    return run_sweep(spec, tmp / "out", final_seeds=2, log=lambda s: None)


def test_pruning_stops_the_hopeless_trials(clean_sweep):
    trials = trials_of(clean_sweep)
    assert len(trials) == 6 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    hopeless = [t for t in trials if t.params["train.optim.lr"] == HOPELESS_LR]
    assert 2 <= len(hopeless) <= 4  # the spec makes about half the trials hopeless
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, "no trial was pruned"
    # Once the pruner has its start-up trials, every hopeless trial is stopped before its last epoch.
    startup = sorted(t.number for t in trials if t.state == TrialState.COMPLETE)[:2]
    assert all(t.state == TrialState.PRUNED for t in hopeless if t.number > max(startup))
    for t in pruned:
        assert len(t.intermediate_values) < 3
        history = json.loads((clean_sweep / t.user_attrs["run_dir"] / "history.json").read_text())
        assert len(history["epochs"]) == len(t.intermediate_values)  # the partial run is kept
        assert history["meta"]["stopped"].startswith("pruned after epoch")
    for t in trials:
        if t.state == TrialState.COMPLETE:
            assert t.value == json.loads((clean_sweep / t.user_attrs["run_dir"] / "history.json").read_text()
                                         )["epochs"][-1]["val_acc"]


def test_trials_never_read_the_test_set(tmp_path, data, clean_sweep):
    # The same search on a copy whose test split is garbage: every trial's every value is unchanged.
    poisoned = poison_test_split(data, tmp_path / "poisoned")
    spec = load_sweep_spec(write(tmp_path / "s.toml", spec_text(poisoned)))
    folder = run_sweep(spec, tmp_path / "out", final_seeds=2, log=lambda s: None)

    def values(folder):
        return [(t.number, t.params, t.state, t.value, t.intermediate_values) for t in trials_of(folder)]

    assert values(folder) == values(clean_sweep)
    for t in trials_of(folder):
        run = folder / t.user_attrs["run_dir"]
        history = json.loads((run / "history.json").read_text())
        assert not any(k.startswith("test") for row in history["epochs"] for k in row)
        assert not (run / "predictions.npz").exists()
    # The final seeds are where the test set is read: there, the garbage shows.
    from cifarlab.store import Store

    with Store(clean_sweep / "final", create=False) as clean, Store(folder / "final", create=False) as bad:
        clean_runs, bad_runs = clean.runs(), bad.runs()
    assert [r.seed for r in clean_runs] == [r.seed for r in bad_runs] == [1, 2]  # train.seed 0 + 1, + 2
    assert [r.val_acc for r in clean_runs] == [None, None]  # data.val = 0: every training image is used
    assert [h["train_loss"] for r in clean_runs for h in r.history] == \
        [h["train_loss"] for r in bad_runs for h in r.history]
    for root, runs, n_test in ((clean_sweep, clean_runs, 40), (folder, bad_runs, 70)):  # 4 and 7 per class
        for r in runs:
            with np.load(root / "final" / r.run_dir / "predictions.npz") as z:
                assert len(z["labels"]) == n_test


def test_the_final_seeds_retrain_the_best_trial_on_every_training_image(clean_sweep):
    from cifarlab.store import Store

    trials = trials_of(clean_sweep)
    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: (t.value, -t.number))
    with Store(clean_sweep / "final", create=False) as store:
        runs, meta = store.runs(), store.meta()
    assert meta["winner"] == best.number and {r.experiment for r in runs} == {f"trial-{best.number}"}
    for r in runs:
        assert r.config["data"]["val"] == 0 and r.config["train"]["optim"]["lr"] == best.params["train.optim.lr"]
        assert r.config["train"]["reg"]["label_smoothing"] == best.params["train.reg.label_smoothing"]
        assert (clean_sweep / "final" / r.run_dir / "predictions.npz").is_file()


def test_rerunning_continues_the_search_and_a_different_spec_is_refused(tmp_path, data, clean_sweep, cli):
    spec = write(tmp_path / "s.toml", spec_text(data))
    res = cli("sweep", spec, "--out", clean_sweep, "--final-seeds", "2")  # all 6 trials and both seeds are done
    assert res.code == 0 and len(trials_of(clean_sweep)) == 6 and "0 to train" in res.out
    changed = write(tmp_path / "c.toml", spec_text(data).replace("high = 0.2", "high = 0.3"))
    res = cli("sweep", changed, "--out", clean_sweep)
    assert res.code == 2 and len(res.err_lines) == 1 and "started from a different spec" in res.err


def test_an_invalid_point_is_a_failed_trial_with_its_reason(tmp_path, data):
    search = 'train.alt_flip = { type = "categorical", choices = [false, true] }\n' \
             'model.options.width = { type = "categorical", choices = [8, 200] }'
    spec = load_sweep_spec(write(tmp_path / "s.toml", spec_text(data, search=search, epochs=1).replace(
        "trials = 6", "trials = 4")))
    folder = run_sweep(spec, tmp_path / "out", log=lambda s: None)
    trials = trials_of(folder)
    assert len(trials) == 4
    for t in trials:
        if t.params["train.alt_flip"]:
            assert t.state == TrialState.FAIL and "alt_flip needs augment" in t.user_attrs["fail_reason"]
        elif t.params["model.options.width"] == 200:
            assert t.state == TrialState.FAIL and "over the budget" in t.user_attrs["fail_reason"]
        else:
            assert t.state == TrialState.COMPLETE


def test_the_report_shows_the_search_and_the_winner(clean_sweep, data, cli):
    res = cli("report", clean_sweep, "--data", data)  # test images come only from the data the user names
    assert res.code == 0, res.err
    html = (clean_sweep / "report.html").read_text()
    md = (clean_sweep / "report.md").read_text()
    for section in ("Best trials", "Optimisation history", "Parameter importances", "Slice plot", "Final seeds",
                    "Sweep spec"):
        assert section in html and section in md
    trials = trials_of(clean_sweep)
    pruned = sum(t.state == TrialState.PRUNED for t in trials)
    assert f"**pruned:** {pruned} (" in md
    files = {p.name for p in (clean_sweep / "report-files").glob("*.png")}
    assert {"sweep-history.png", "sweep-curves.png", "sweep-slice.png"} <= files
    assert any(name.endswith("-mistakes.png") for name in files)  # the winner's final runs, with their mistakes
    assert "src=\"http" not in html  # self-contained


# ---------------------------------------------------------------------------------------------
# Without Optuna


def test_without_optuna_sweep_says_how_to_install_it_and_nothing_else_imports_it(tmp_path, data, clean_sweep):
    spec = write(tmp_path / "s.toml", spec_text(data))
    commands = [["sweep", str(spec)], ["report", str(clean_sweep)]]
    code = ("import sys; sys.modules['optuna'] = None\n"  # makes `import optuna` fail as if not installed
            "from cifarlab.cli import main\n"
            f"print([main(argv) for argv in {commands!r}])")
    proc = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "[2, 2]", proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"cifarlab {argv[0]}: error: sweeps need Optuna: pip install 'cifarlab[sweep]'" for argv in commands]
    code = ("import sys, cifarlab.cli, cifarlab.study, cifarlab.report, cifarlab.sweep, cifarlab.experiment\n"
            "cifarlab.cli.build_parser()\nassert 'optuna' not in sys.modules, 'optuna was imported'")
    proc = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------------------------------------
# Several processes


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def running_worker_pid(load, *logs: Path) -> int | None:
    """The pid of a worker in the middle of a trial: RUNNING in the storage, and said so in its log."""
    try:
        trials = load().get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    except Exception:  # noqa: BLE001 - the storage may not exist yet
        return None
    started = set(started_numbers(*(log.read_text() for log in logs)))
    for t in trials:
        if "worker" in t.user_attrs and t.number in started:
            return int(t.user_attrs["worker"].rsplit(":", 1)[1])
    return None


def test_a_trial_whose_worker_died_inside_its_claim_is_failed_and_run_again(tmp_path, data):
    # A worker killed between asking Optuna for a trial and tagging it with its pid left a running trial
    # that no liveness check could attribute: the search then waited for it forever (a CI run, 2026-11-27).
    spec = load_sweep_spec(write(tmp_path / "s.toml", spec_text(data, epochs=1).replace("trials = 6", "trials = 2")))
    out = tmp_path / "out"
    from cifarlab.sweep.run import open_storage, open_study

    out.mkdir()
    open_study(spec, open_storage(out, None, spec.options)).ask()  # asked, never tagged: the worker died here
    lines: list[str] = []
    run_sweep(spec, out, timeout=120, log=lines.append)
    trials = trials_of(out)
    check_finished(trials, total=2, killed=1)
    assert trials[0].user_attrs["fail_reason"] == "its worker died while claiming it"
    assert "trial 0: its worker died while claiming it; a new trial takes its place" in lines


def check_finished(trials, total: int, killed: int) -> None:
    """`total` trials finished, each dead worker's trial failed and run again, nothing left running."""
    states = [t.state for t in trials]
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    assert sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states) == total
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == killed
    retries = {t.system_attrs.get("failed_trial"): t for t in trials if "failed_trial" in t.system_attrs}
    for t in failed:  # one killed inside its claim had no parameters yet: its retry samples afresh
        assert t.number in retries and (retries[t.number].params == t.params or not t.params)


def check_each_ran_once(trials, started: list[int]) -> None:
    """No trial number was started twice, and every finished trial was started (a worker killed between
    claiming a trial and logging it leaves a failed trial without a line)."""
    assert len(started) == len(set(started)), f"a trial number ran twice: {sorted(started)}"
    assert set(started) <= {t.number for t in trials}
    assert {t.number for t in trials if t.state != TrialState.FAIL} <= set(started)


def test_journal_with_two_jobs_resumes_after_a_kill(tmp_path, data):
    spec = write(tmp_path / "s.toml", spec_text(data, epochs=2).replace("trials = 6", "trials = 3"))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "cifarlab", "sweep", str(spec), "--out", str(out), "--jobs", "2"]
    log1 = tmp_path / "first.log"
    with log1.open("w") as fh:
        proc = subprocess.Popen(cmd, env=env(), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        def load():
            return optuna.load_study(study_name="t", storage=JournalStorage(JournalFileBackend(str(out / "sweep.journal"))))

        wait_for(lambda: running_worker_pid(load, log1), 180, "a trial to start")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep and both its workers, mid-trial
        proc.wait()
    interrupted = [t.number for t in load().get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    assert interrupted
    second: list[str] = []  # the same command again, in this process (one worker is enough to finish)
    run_sweep(load_sweep_spec(spec), out, jobs=1, log=second.append)
    trials = load().get_trials(deepcopy=False)
    check_finished(trials, total=3, killed=len(interrupted))
    assert {t.number for t in trials if t.state == TrialState.FAIL} == set(interrupted)
    assert all(f"trial {n}: its worker died" in "\n".join(second) for n in interrupted)
    check_each_ran_once(trials, started_numbers(log1.read_text(), "\n".join(second)))


# ---------------------------------------------------------------------------------------------
# PostgreSQL: three workers (as on three machines) share one search; one is killed mid-trial


def start_workers(spec: Path, url: str, tmp_path: Path) -> tuple[list[subprocess.Popen], list[Path]]:
    """Three `cifarlab sweep` workers on one storage URL, each with its own folder, as on separate machines."""
    procs, logs = [], []
    for i in range(3):
        logs.append(tmp_path / f"worker{i}.log")
        with logs[-1].open("w") as fh:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "cifarlab", "sweep", str(spec), "--out", str(tmp_path / f"m{i}"),
                 "--storage", url], env=env(), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True))
    return procs, logs


def kill_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.mark.postgres
def test_three_workers_share_one_postgres_search_and_a_killed_ones_trial_is_retried(tmp_path, data, postgres_url,
                                                                                     cli):
    spec = write(tmp_path / "s.toml", spec_text(data, sweep="heartbeat = 1\ngrace = 3"))
    procs, logs = start_workers(spec, postgres_url, tmp_path)  # only the database is shared
    try:
        def load():
            return optuna.load_study(study_name="t", storage=postgres_url)

        victim_pid = wait_for(lambda: running_worker_pid(load, *logs), 180, "a trial to start")
        victim = next(p for p in procs if p.pid == victim_pid)
        victim.kill()  # SIGKILL: no chance to tell the storage anything
        victim.wait()
        for p in procs:
            assert p.wait(timeout=600) in (0, -signal.SIGKILL)
    finally:
        kill_all(procs)
    trials = load().get_trials(deepcopy=False)
    check_finished(trials, total=6, killed=1)
    check_each_ran_once(trials, started_numbers(*(log.read_text() for log in logs)))
    assert all(p.returncode == 0 for p in procs if p is not victim)

    changed = write(tmp_path / "c.toml", spec_text(data, epochs=5, sweep="heartbeat = 1\ngrace = 3"))
    res = cli("sweep", changed, "--out", tmp_path / "m9", "--storage", postgres_url)
    assert res.code == 2 and len(res.err_lines) == 1 and "started from a different spec" in res.err

    res = cli("report", tmp_path / "m0", "--storage", postgres_url)
    assert res.code == 0, res.err
    assert "Best trials" in (tmp_path / "m0" / "report.html").read_text()


@pytest.mark.postgres
# In-process, where pytest resets the filters sweep/storage.py sets for users: Optuna's notes on heartbeats.
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning",
                            "ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_postgres_trial_whose_worker_died_right_after_its_claim_is_failed_and_run_again(tmp_path, data,
                                                                                        postgres_url):
    # Optuna's stale check passes over a trial that never beat: a worker killed after its claim, before
    # `beating` sent a first heartbeat, left a running trial that the search then waited for forever.
    text = spec_text(data, epochs=1, sweep="heartbeat = 1\ngrace = 3")
    spec = load_sweep_spec(write(tmp_path / "s.toml", text.replace('name = "t"', 'name = "claim"')
                                 .replace("trials = 6", "trials = 2")))
    from cifarlab.sweep.run import _Worker

    out = tmp_path / "out"
    out.mkdir()
    claimed = _Worker(spec, out, postgres_url, 2, lambda line: None).claim()  # claimed, never run: died here
    assert claimed not in ("wait", "done")
    lines: list[str] = []
    run_sweep(spec, out, url=postgres_url, timeout=120, log=lines.append)
    check_finished(trials_of(out, postgres_url), total=2, killed=1)
    assert "trial 0: its worker died; its parameters are queued again" in lines


# ---------------------------------------------------------------------------------------------
# Redis: the same, on Optuna's Redis journal, where a worker's key that expires stands for the heartbeat


@pytest.mark.redis
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # JournalRedisBackend, below
def test_three_workers_share_one_redis_search_and_a_killed_ones_trial_is_retried(tmp_path, data, redis_url, cli):
    import redis
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalRedisBackend

    from cifarlab.sweep.storage_redis import worker_key

    heartbeat, grace = 1, 3
    spec = write(tmp_path / "s.toml", spec_text(data, sweep=f"heartbeat = {heartbeat}\ngrace = {grace}"))
    procs, logs = start_workers(spec, redis_url, tmp_path)  # only Redis is shared
    storage = JournalStorage(JournalRedisBackend(redis_url))
    try:
        def load():
            return optuna.load_study(study_name="t", storage=storage)

        victim_pid = wait_for(lambda: running_worker_pid(load, *logs), 180, "a trial to start")
        victim = next(p for p in procs if p.pid == victim_pid)
        victim.kill()  # SIGKILL: its key is left to expire
        victim.wait()
        # Nothing renews the victim's key any more: it expires this many ms from now.
        ttl_ms = redis.Redis.from_url(redis_url).pttl(worker_key(f"{socket.gethostname()}:{victim_pid}"))
        expires_at = time.time() + ttl_ms / 1000
        for p in procs:
            assert p.wait(timeout=600) in (0, -signal.SIGKILL)
    finally:
        kill_all(procs)
    trials = load().get_trials(deepcopy=False)
    check_finished(trials, total=6, killed=1)
    check_each_ran_once(trials, started_numbers(*(log.read_text() for log in logs)))
    assert all(p.returncode == 0 for p in procs if p is not victim)
    [dead] = [t for t in trials if t.state == TrialState.FAIL]
    assert dead.user_attrs["worker"].endswith(f":{victim_pid}") and "stopped beating" in dead.user_attrs["fail_reason"]
    if ttl_ms > 0:  # (else the victim's beats had been starved and its key was gone already)
        assert dead.datetime_complete.timestamp() >= expires_at - 0.05  # failed once its key expired, not before

    # Every folder that took part reads the whole search back.
    assert len(trials_of(tmp_path / "m2", redis_url)) == len(trials)
    res = cli("report", tmp_path / "m0", "--storage", redis_url)
    assert res.code == 0, res.err
    assert "Best trials" in (tmp_path / "m0" / "report.html").read_text()

    changed = write(tmp_path / "c.toml", spec_text(data, epochs=5, sweep=f"heartbeat = {heartbeat}\ngrace = {grace}"))
    res = cli("sweep", changed, "--out", tmp_path / "m9", "--storage", redis_url)
    assert res.code == 2 and len(res.err_lines) == 1 and "started from a different spec" in res.err
    res = cli("sweep", spec, "--out", tmp_path / "m9", "--storage", redis_url.replace(PASSWORD, "wrong-password"))
    assert res.code == 2 and len(res.err_lines) == 1 and "cannot open" in res.err and "wrong-password" not in res.err

    # The password never reaches a log line, sweep.json or a report.
    written = [log.read_text() for log in logs] + [p.read_text() for p in tmp_path.glob("m*/sweep.json")] + \
        [(tmp_path / "m0" / name).read_text() for name in ("report.html", "report.md")]
    assert all(PASSWORD not in text for text in written)
    assert ":***@127.0.0.1" in (tmp_path / "m0" / "sweep.json").read_text()


@pytest.mark.parametrize("url, needle", [
    ("redis://:secret@127.0.0.1:{port}/0", "Connection refused"),
    ("redis://:secret@127.0.0.1:notaport/0", "cannot open"),
    ("redis://:secret@127.0.0.1:{port}/first", "the database after the host is a number"),
])
def test_an_unreachable_or_bad_redis_url_is_one_line(tmp_path, data, cli, url, needle):
    pytest.importorskip("redis", reason="the [sweep] extra is not installed")
    spec = write(tmp_path / "s.toml", spec_text(data))
    res = cli("sweep", spec, "--out", tmp_path / "out", "--storage", url.format(port=free_port()))
    assert res.code == 2 and len(res.err_lines) == 1 and needle in res.err, res.err
    assert "secret" not in res.err and ":***@127.0.0.1" in res.err
