"""What cifarlab may write over or delete, and how.

cifarlab deletes only what it made:
- with --overwrite, a cifarlab run folder (config.json recording cifarlab's version, and
  history.json; finished or `.incomplete`) or a study folder (a valid store.sqlite), and only
  once the new run is complete and in place;
- its own hidden staging folders, `.<name>.cifarlab-<pid>-<random>`, once process <pid> is gone,
  unless they hold the checkpoint of a run that is being continued (`cifarlab train --resume`, a
  resumed study), which adopts the folder instead.
An output folder may not be, or contain, the working directory, the home folder, a filesystem
root or the folder its staging folder goes into.
"""
from __future__ import annotations

import ctypes
import json
import os
import re
import secrets
import shutil
import sys
from pathlib import Path
from typing import Callable

from cifarlab.errors import ConfigError
from cifarlab.locks import holder
from cifarlab.store import STORE_NAME, Store, StoreError

# `.<name>.cifarlab-<pid>-<8 hex>` while a run is built; `...-old` briefly holds a run being replaced.
_STAGE = re.compile(r"^\.(?P<name>.+)\.cifarlab-(?P<pid>\d{1,10})-(?P<kind>[0-9a-f]{8}|old)$")
MAX_NAME_BYTES = 200  # a folder name plus the staging suffix must stay under the usual 255-byte limit


def out_problem(out: Path) -> str | None:
    """Why `out` may not be an output folder, or None."""
    if out.name in ("", ".", ".."):
        return f"'{out}' does not end in a folder name of its own; name a new folder, such as runs/NAME"
    if len(os.fsencode(out.name)) > MAX_NAME_BYTES:
        return f"'{out.name[:20]}...' is too long for a folder name (at most {MAX_NAME_BYTES} bytes)"
    real = out.resolve()
    if real.parent == real:
        return f"'{out}' is a filesystem root"
    places = [("the working directory", Path.cwd())]
    try:
        places.append(("your home folder", Path.home()))
    except (RuntimeError, KeyError):  # no $HOME and no password entry
        pass
    for what, place in places:
        place = place.resolve()
        if real == place or real in place.parents:
            return f"'{out}' is or contains {what}"
    stage_dir = out.parent.resolve()
    if stage_dir == real or real in stage_dir.parents:
        return f"'{out}' contains the folder its staging folder would go into ('{out.parent}')"
    return None


def is_run_folder(path: Path) -> bool:
    """A cifarlab run, finished or `.incomplete`: config.json naming cifarlab's version, and history.json."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    version = config.get("version") if isinstance(config, dict) else None
    return isinstance(version, dict) and "cifarlab" in version and (path / "history.json").is_file()


def is_study_folder(path: Path) -> bool:
    """A folder holding a valid cifarlab study store."""
    if not (path / STORE_NAME).is_file():
        return False
    try:
        Store(path, create=False).close()
    except StoreError:
        return False
    return True


def replace_problem(path: Path) -> str | None:
    """Why --overwrite may not replace `path`, or None for a cifarlab run or study folder."""
    if path.is_symlink():
        return "is a symbolic link"
    if not path.is_dir():
        return "is not a folder"
    if is_run_folder(path):
        return None
    if is_study_folder(path):
        pid = holder(path)
        return None if pid is None else f"is a study folder in use by another process{f' (pid {pid})' if pid else ''}"
    return "is not a cifarlab run or study folder"


def check_output(out: str | os.PathLike, overwrite: bool = False) -> None:
    """Refuse an output folder cifarlab may not use, or an existing one it may not (or was not asked to) replace."""
    out = Path(out)
    problem = out_problem(out)
    if problem:
        raise ConfigError(problem)
    if os.path.lexists(out):
        if not overwrite:
            raise ConfigError(f"'{out}' already exists (choose another --out or pass --overwrite)")
        problem = replace_problem(out)
        if problem:
            raise ConfigError(f"--overwrite replaces only a cifarlab run or study folder, and '{out}' {problem}; "
                              "it was left untouched")


def free_name(path: Path) -> Path:
    """`path`, or `path-2`, `path-3`, ... whichever does not exist yet."""
    candidate, k = path, 2
    while os.path.lexists(candidate):
        candidate, k = path.with_name(f"{path.name}-{k}"), k + 1
    return candidate


# ---------------------------------------------------------------------------------------------
# Staging folders


def new_stage(out: Path) -> Path:
    """A new hidden staging folder beside `out`, named for this process; its mode follows the umask."""
    while True:
        stage = out.parent / f".{out.name}.cifarlab-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            stage.mkdir()
            return stage
        except FileExistsError:
            continue


def pid_alive(pid: int) -> bool:
    """Whether process `pid` is running; one that cannot be checked counts as running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError, ValueError):  # PermissionError: someone else's process
        return True
    try:  # a zombie has exited; only its parent's wait() is missing
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def _dead_stages(folder: Path, name: str | None):
    """(entry, match) for each staging folder in `folder` (of output `name`, or any) whose process is gone."""
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return
    for entry in entries:
        m = _STAGE.match(entry.name)
        if m and (name is None or m["name"] == name) and not entry.is_symlink() and entry.is_dir() \
                and not pid_alive(int(m["pid"])):
            yield entry, m


def stale_stages(folder: Path, name: str) -> list[Path]:
    """The staging folders of output `name` in `folder` whose process is gone (not the `-old` ones)."""
    return [entry for entry, m in _dead_stages(folder, name) if m["kind"] != "old"]


def clear_stale_stages(folder: Path, name: str | None = None, keep: Callable[[Path], bool] | None = None) -> list[Path]:
    """Delete staging folders in `folder` (of output `name`, or any) whose process is gone; return them.

    A run set aside while being replaced (`-old`) whose replacement never arrived is put back instead.
    `keep(stage)`: leave that stage (a killed run's checkpoint that its run will continue from).
    """
    removed = []
    for entry, m in _dead_stages(folder, name):
        target = folder / m["name"]
        if m["kind"] == "old" and not os.path.lexists(target):
            os.rename(entry, target)
            continue
        if keep is not None and m["kind"] != "old" and keep(entry):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step where the OS can (Linux renameat2, macOS renamex_np)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if sys.platform.startswith("linux") and hasattr(libc, "renameat2"):
            return libc.renameat2(-100, os.fsencode(a), -100, os.fsencode(b), 2) == 0  # AT_FDCWD, RENAME_EXCHANGE
        if sys.platform == "darwin" and hasattr(libc, "renamex_np"):
            return libc.renamex_np(os.fsencode(a), os.fsencode(b), 2) == 0  # RENAME_SWAP
    except OSError:
        pass
    return False


def swap_into_place(stage: Path, out: Path) -> None:
    """Move the complete `stage` to `out`; an existing `out` is deleted only after the new one is in place."""
    if not os.path.lexists(out):
        os.rename(stage, out)
        return
    if _exchange(stage, out):  # `out` is never missing; `stage` now holds the old run
        shutil.rmtree(stage)
        return
    # Two renames: a kill between them leaves the old run in `-old`, which the next command puts back.
    aside = out.parent / f".{out.name}.cifarlab-{os.getpid()}-old"
    os.rename(out, aside)
    os.rename(stage, out)
    shutil.rmtree(aside)
