"""`cifarlab models`: the registry with parameter counts."""
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    sub.add_parser("models", help="list the registry's models with their parameter counts and options")


def run(args: argparse.Namespace) -> int:
    from cifarlab.models import count_params, create_model, list_models, model_doc, model_options

    rows = [(name, f"{count_params(create_model(name)):,}", model_doc(name)) for name in list_models()]
    w0, w1 = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    print(f"{'model':<{w0}}  {'params':>{w1}}  description")
    for name, params, doc in rows:
        print(f"{name:<{w0}}  {params:>{w1}}  {doc}")
        opts = ", ".join(f"{k}={v}" for k, v in model_options(name).items())
        print(f"{'':<{w0}}  {'':>{w1}}  options: {opts}")
    print("your own model: --model path/to/file.py:Net (an nn.Module class or a function returning one), "
          "also in `cifarlab inspect` and study specs; see README, 'Your own model'")
    return 0
