"""One cifarlab process per study folder: an exclusive flock on `<folder>/.cifarlab.lock`.

The lock is held for the whole study; a second process is refused at once with the holder's pid
(it does not wait: a study can run for hours). The kernel drops the lock when its holder exits,
however it exits, so a killed study never leaves the folder locked. The file itself stays: deleting
it would let two processes lock two different files.
"""
from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from cifarlab.console import warn
from cifarlab.errors import ConfigError

LOCK_NAME = ".cifarlab.lock"


def _holder(fd: int) -> str:
    """The pid the holder wrote into the lock file ('' if it has not yet)."""
    deadline = time.monotonic() + 5.0  # the holder writes its pid just after taking the lock
    while True:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text.isdigit() or time.monotonic() > deadline:
            return text if text.isdigit() else ""
        time.sleep(0.02)


def holder(folder: str | os.PathLike) -> str | None:
    """Who holds `folder`'s lock: a pid ('' when unknown), or None when nobody does."""
    try:
        fd = os.open(Path(folder) / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(fd)
    except OSError:
        return None
    finally:
        os.close(fd)  # also releases the lock if we took it
    return None


class FolderLock:
    """`with FolderLock(folder):` holds `folder`'s lock or raises ConfigError naming the holder."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.fd: int | None = None

    def __enter__(self) -> "FolderLock":
        fd = os.open(self.folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise ConfigError(f"'{self.folder}' is in use by another cifarlab process"
                              f"{f' (pid {holder})' if holder else ''}; wait for it to finish or choose "
                              "another --out") from None
        except OSError as exc:  # a file system without locks (some network mounts): go on, say so
            warn(f"warning: cannot lock '{self.folder}' ({exc.strerror}); do not run two studies on it at once")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the lock
            self.fd = None
