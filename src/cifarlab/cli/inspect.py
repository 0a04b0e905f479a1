"""`cifarlab inspect`: a model's layer table (shapes, jumps, receptive fields, parameters, MACs)."""
from __future__ import annotations

import argparse
import sys

from cifarlab.cli.common import add_config_args, model_config, positive_int
from cifarlab.errors import BudgetError

# Same as cifarlab.analysis.FORMATS; importing that here would load torch just to print --help.
FORMATS = ("table", "markdown", "csv", "json")


def input_shape(text: str) -> tuple[int, int, int]:
    """'3x32x32' -> (3, 32, 32)."""
    try:
        dims = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) <= 0:
        raise argparse.ArgumentTypeError(f"expected CxHxW with positive sizes, such as 3x32x32, got '{text}'")
    return dims  # type: ignore[return-value]


def add_parser(sub) -> None:
    p = sub.add_parser("inspect", help="print a model's layers with shapes, receptive fields, parameters and MACs",
                       description="One row per layer of the real forward pass: kernel k, stride s, padding p, "
                                   "dilation d, map size N, jump J and receptive field R (input pixels), "
                                   "output shape, parameters and multiply-accumulates.")
    add_config_args(p, model_only=True)
    out = p.add_argument_group("output")
    out.add_argument("--input", type=input_shape, default=(3, 32, 32), metavar="CxHxW",
                     help="input image size (default 3x32x32)")
    out.add_argument("--format", choices=FORMATS, default="table",
                     help="table (aligned text, default) | markdown | csv | json")
    out.add_argument("--max-params", type=positive_int, metavar="N",
                     help="exit 1 when the model has more than N trainable parameters")


def run(args: argparse.Namespace) -> int:
    from cifarlab.analysis import format_table, layer_table
    from cifarlab.models import check_budget, model_from_config

    cfg = model_config(args)
    model = model_from_config(cfg)
    print(format_table(layer_table(model, args.input), args.format))
    try:
        n = check_budget(model, args.max_params, cfg.name)
    except BudgetError as exc:  # over budget is a verdict on the model, not a usage error: exit 1, not 2
        print(f"cifarlab {args.command}: error: {exc}", file=sys.stderr)
        return 1
    if args.max_params is not None:  # on stderr for csv/json, so their stdout stays machine-readable
        print(f"within budget: {n:,} <= {args.max_params:,} trainable parameters",
              file=sys.stdout if args.format in ("table", "markdown") else sys.stderr)
    return 0
