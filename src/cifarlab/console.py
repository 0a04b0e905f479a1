"""Where progress goes: one flushed line per event (so `| tee` and log files see each as it happens)."""
from __future__ import annotations


def log_line(line: str) -> None:
    """Default logger: print and flush."""
    print(line, flush=True)


def plural(n: int, noun: str) -> str:
    """'1 seed', '5 seeds'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def warn(line: str) -> None:
    """A warning: one line on stderr, the work goes on."""
    import sys

    print(line, file=sys.stderr, flush=True)
