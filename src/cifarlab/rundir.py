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
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cifarlab import __version__
from cifarlab.errors import ConfigError
from cifarlab.metrics import COLUMNS

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


def check_free(out: str | os.PathLike, overwrite: bool = False) -> None:
    """Refuse an existing run folder unless `overwrite`: callable early, before slow work."""
    if Path(out).exists() and not overwrite:
        raise ConfigError(f"'{out}' already exists (choose another --out or pass --overwrite)")


class RunDir:
    """Builds a run folder in a hidden staging folder; `commit()` moves it into place."""

    def __init__(self, out: str | os.PathLike, overwrite: bool = False) -> None:
        self.out = Path(out)
        check_free(self.out, overwrite)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.stage = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", dir=self.out.parent))
        self.overwrite = overwrite

    def commit(self) -> Path:
        if self.out.exists() and self.overwrite:
            shutil.rmtree(self.out)
        os.chmod(self.stage, 0o755)  # mkdtemp makes it private; a run folder is meant to be shared
        os.replace(self.stage, self.out)
        return self.out

    def abandon(self) -> Path | None:
        """Keep what an interrupted run finished as `<out>.incomplete`; drop an empty stage."""
        if not (self.stage / "history.json").exists():
            shutil.rmtree(self.stage, ignore_errors=True)
            return None
        target = self.out.with_name(self.out.name + ".incomplete")
        if target.exists():
            shutil.rmtree(target)
        os.replace(self.stage, target)
        return target
