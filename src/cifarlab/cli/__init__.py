"""Command line: `cifarlab <command>`. Only this package sees argparse.

Each command module exposes `add_parser(subparsers)`, which registers the command and its flags, and
`run(args) -> int`. Errors meant for the user become one line on stderr and exit code 2
(or the error's own code, errors.EXIT_*); so do refusals of the operating system (a full disk, a
folder without write permission); Ctrl-C exits 130 and SIGTERM 143. A traceback means a bug.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from cifarlab import __version__
from cifarlab.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_TERMINATED, CifarlabError
from cifarlab.signals import Terminated, sigterm_interrupts

COMMANDS = ("train", "models", "inspect", "study", "sweep", "report", "data", "predict", "lr-find", "export")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit 2, without the usage dump
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cifarlab", description="Run, compare and understand small CNN experiments on "
                     "CIFAR-10 under tight budgets. `cifarlab COMMAND -h` for a command's flags.")
    parser.add_argument("--version", action="version", version=f"cifarlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        module_name = f"cifarlab.cli.{name.replace('-', '_')}"  # lr-find -> cli/lr_find.py
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        module.add_parser(sub)
        sub.choices[name].set_defaults(func=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with sigterm_interrupts():  # SIGTERM is Ctrl-C: the finished epochs are kept
            return int(args.func(args) or 0)
    except CifarlabError as exc:
        print(f"cifarlab {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Terminated:
        print(f"cifarlab {args.command}: terminated (SIGTERM)", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print(f"cifarlab {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `cifarlab inspect ... | head`: the reader left; not an error worth a traceback.
        # Point stdout at /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # the system refused: no space, no permission, a name too long, ...
        where = f": '{exc.filename}'" if exc.filename else ""
        print(f"cifarlab {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_BAD_INPUT
