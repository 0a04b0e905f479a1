"""User-facing errors: the CLI prints the message on one line and exits with `exit_code`.

Exit codes, named once: 2 bad input or environment, 3 a run diverged, 130 Ctrl-C (SIGINT),
143 SIGTERM; `cifarlab inspect --max-params` exits 1 for a model over budget.
"""
from __future__ import annotations

import traceback

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM


class CifarlabError(Exception):
    """A problem with the user's input or environment (never a bug): one line, exit code 2."""

    exit_code = EXIT_BAD_INPUT


class DataError(CifarlabError):
    """CIFAR-10 could not be found, read or verified."""


class ConfigError(CifarlabError):
    """A configuration value, flag or spec entry is wrong."""


class BudgetError(CifarlabError):
    """A model has more trainable parameters than the budget allows."""


class DivergedError(CifarlabError):
    """A run's loss became NaN/inf; the run folder is kept, and the command exits 3."""

    exit_code = EXIT_DIVERGED


def exception_line(exc: BaseException, file: str | None = None) -> str:
    """'NameError: name 'nn' is not defined (line 7)': the last line Python would print for `exc`, with the
    line of `file` (a user's model file) it was raised from when that is known."""
    text = traceback.format_exception_only(type(exc), exc)[-1].strip()
    line = None
    if isinstance(exc, SyntaxError) and exc.lineno and (file is None or exc.filename == file):
        line = exc.lineno
    elif file is not None:
        for frame, lineno in traceback.walk_tb(exc.__traceback__):
            if frame.f_code.co_filename == file:
                line = lineno  # the innermost call in the user's file: where their code went wrong
    return f"{text} (line {line})" if line else text
