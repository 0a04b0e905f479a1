"""A run directory that reproduces itself: config.json, history.csv/json, model.pt, written atomically.

Work happens in a hidden sibling folder that is renamed into place only when the run is complete,
so a folder named like a run is always a finished run. An interrupted run is kept, renamed
`<name>.incomplete`, with the epochs it finished.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cifarlab import __version__
from cifarlab.errors import ConfigError
from cifarlab.metrics import COLUMNS
from cifarlab.safety import (check_output, clear_stale_stages, free_name, is_run_folder, new_stage, replace_problem,
                             swap_into_place)

def code_version() -> dict[str, str]:
    """cifarlab's version and, when run from a git checkout, the commit."""
    # str(): torch.__version__ is a TorchVersion, which torch.load(weights_only=True) refuses to unpickle.
    out = {"cifarlab": __version__, "torch": str(torch.__version__)}
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=5)
        if commit.returncode == 0:
            out["commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def write_history(folder: Path, rows: list[dict], meta: dict) -> None:
    """history.csv (one row per epoch, fixed columns) and history.json (rows + run facts)."""
    cols = [c for c in COLUMNS if any(c in r for r in rows)]
    tmp = folder / "history.csv.tmp"
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items() if k in cols})
    os.replace(tmp, folder / "history.csv")
    write_json(folder / "history.json", {"meta": meta, "epochs": rows})


def save_checkpoint(path: Path, model: nn.Module, config: dict, extra: dict | None = None) -> None:
    """Weights + config in plain containers, loadable with torch.load(weights_only=True)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"state_dict": state, "config": config, **(extra or {})}, tmp)
    os.replace(tmp, path)


class RunDir:
    """Builds a run folder in a hidden staging folder; `commit()` moves it into place."""

    def __init__(self, out: str | os.PathLike, overwrite: bool = False, adopt: Path | None = None) -> None:
        """`adopt`: go on in that folder (`out.incomplete`, or a killed run's stage), taken over by a rename."""
        self.out = Path(out)
        check_output(self.out, overwrite)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.stage = new_stage(self.out)
        if adopt is not None:
            try:  # onto the empty stage just made: one atomic rename, named for this process from now on
                os.rename(adopt, self.stage)
            except OSError as exc:
                shutil.rmtree(self.stage, ignore_errors=True)
                raise ConfigError(f"could not take over '{adopt}' ({exc.strerror}): another process may have "
                                  "resumed it") from None
        clear_stale_stages(self.out.parent, self.out.name)  # left by a killed run into the same folder
        self.overwrite = overwrite

    def commit(self) -> Path:
        if os.path.lexists(self.out):  # checked before training; look again, it may have appeared since
            problem = replace_problem(self.out) if self.overwrite else "already exists"
            if problem:
                kept = free_name(self.out.with_name(self.out.name + ".new"))
                os.rename(self.stage, kept)
                raise ConfigError(f"'{self.out}' {problem} (it changed while this run trained); "
                                  f"the new run is in '{kept}'")
        swap_into_place(self.stage, self.out)
        return self.out

    def drop_incomplete(self) -> None:
        """Delete `out.incomplete` when it is a cifarlab run (after a fresh run replaced it with --overwrite)."""
        incomplete = self.out.with_name(self.out.name + ".incomplete")
        if incomplete.is_dir() and not incomplete.is_symlink() and is_run_folder(incomplete):
            shutil.rmtree(incomplete)

    def abandon(self) -> Path | None:
        """Keep what an interrupted run finished as `<out>.incomplete`; drop an empty stage."""
        if not (self.stage / "history.json").exists():
            shutil.rmtree(self.stage, ignore_errors=True)
            return None
        target = self.out.with_name(self.out.name + ".incomplete")
        if os.path.lexists(target) and (target.is_symlink() or not is_run_folder(target)):
            target = free_name(target)  # not an earlier interrupted run: leave it alone
        swap_into_place(self.stage, target)
        return target
