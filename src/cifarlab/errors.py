"""User-facing errors: the CLI prints the message on one line and exits with `exit_code`."""
from __future__ import annotations

import traceback


class CifarlabError(Exception):
    """A problem with the user's input or environment (never a bug): one line, exit code 2."""

    exit_code = 2


class DataError(CifarlabError):
    """CIFAR-10 could not be found, read or verified."""


class ConfigError(CifarlabError):
    """A configuration value, flag or spec entry is wrong."""


class BudgetError(CifarlabError):
    """A model has more trainable parameters than the budget allows."""


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
