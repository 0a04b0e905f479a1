"""Signals: SIGTERM ends a command the way Ctrl-C does, and pool workers end when their parent dies."""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class Terminated(KeyboardInterrupt):
    """SIGTERM (timeout, docker stop, systemd, batch schedulers): handled as Ctrl-C is, exit 143."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block SIGTERM raises Terminated (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt_once(signum, frame) -> None:
    # Ctrl-C reaches a worker and then its parent's SIGTERM does: the second must not cut short the
    # saving of the finished epochs that the first started.
    ignore_interrupts()
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


@contextmanager
def interruptible() -> Iterator[None]:
    """A pool worker's task: the first Ctrl-C or SIGTERM interrupts it (and keeps its finished epochs),
    while an idle worker ignores both (its parent stops it)."""
    previous = {signum: signal.signal(signum, _interrupt_once) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def ignore_interrupts() -> None:
    """For an idle pool worker: Ctrl-C at the terminal reaches every process of the group."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def die_with_parent(parent: int, poll_seconds: float = 0.5) -> None:
    """End this process as soon as process `parent` ends, even by SIGKILL.

    Linux: the kernel sends SIGKILL (PR_SET_PDEATHSIG). Everywhere (macOS has no such call): a
    daemon thread that exits the process when it is handed to a new parent.
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # it ended before the line above took effect
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent, poll_seconds), name="cifarlab-parent-watch",
                     daemon=True).start()


def _watch_parent(parent: int, poll_seconds: float) -> None:
    while os.getppid() == parent:
        time.sleep(poll_seconds)
    os._exit(1)
