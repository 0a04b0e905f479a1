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


# Signals whose exception was raised in this process and may have been swallowed: Python runs a signal's
# handler at the next bytecode of the main thread, and when that bytecode belongs to a finalizer or a
# weakref callback (torch runs some every step), the exception is printed as "Exception ignored" and
# the program goes on. A `cifarlab train` that lost its Ctrl-C that way ran on to its last epoch and
# exited 0 (a CI run of tests/test_processes.py, 2026-11-27). `check()` raises it again.
_pending: list[int] = []


def _exception(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _interrupt(signum, frame) -> None:
    _pending.append(signum)
    raise _exception(signum)


def check() -> None:
    """Raise again an interrupt whose first raise was swallowed; a no-op otherwise (cheap: once per step)."""
    if _pending:
        raise _exception(_pending[-1])


@contextmanager
def _handled(handlers: dict[int, object]) -> Iterator[None]:
    previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
    _pending.clear()
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _pending.clear()


@contextmanager
def interrupts() -> Iterator[None]:
    """Within the block SIGTERM raises Terminated and Ctrl-C KeyboardInterrupt, both also seen by `check()`
    (main thread only; elsewhere a no-op). A Ctrl-C this process was started to ignore (`cmd &` in a
    script) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handlers = {signal.SIGTERM: _interrupt}
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        handlers[signal.SIGINT] = _interrupt
    with _handled(handlers):
        yield


def _interrupt_once(signum, frame) -> None:
    # Ctrl-C reaches a worker and then its parent's SIGTERM does: the second must not cut short the
    # saving of the finished epochs that the first started.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _interrupt(signum, frame)


@contextmanager
def interruptible() -> Iterator[None]:
    """A pool worker's task: the first Ctrl-C or SIGTERM interrupts it (and keeps its finished epochs),
    while an idle worker ignores both (its parent stops it)."""
    with _handled({signal.SIGINT: _interrupt_once, signal.SIGTERM: _interrupt_once}):
        yield


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
