"""User-facing errors: the CLI prints the message on one line and exits with `exit_code`."""


class CifarlabError(Exception):
    """A problem with the user's input or environment (never a bug): one line, exit code 2."""

    exit_code = 2


class DataError(CifarlabError):
    """CIFAR-10 could not be found, read or verified."""


class ConfigError(CifarlabError):
    """A configuration value, flag or spec entry is wrong."""


class BudgetError(CifarlabError):
    """A model has more trainable parameters than the budget allows."""
