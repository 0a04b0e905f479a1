"""Flag groups shared by commands, and their translation into typed configs."""
from __future__ import annotations

import argparse
import json
from typing import Any

from cifarlab.config import AUGMENTS, COMPILE_CHOICES, DataConfig, ModelConfig, OptimConfig, RegConfig, RunConfig, TrainConfig
from cifarlab.errors import ConfigError

class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows '(default: X)' only where there is a default worth showing."""

    def _get_help_string(self, action):
        if action.default in (None, False, argparse.SUPPRESS) or not action.help:
            return action.help
        return super()._get_help_string(action)


# Model options with their own flags; any other option goes through --model-opt KEY=VALUE.
MODEL_FLAGS = {"norm": str, "groups": int, "dropout": float}


def parse_value(text: str) -> Any:
    """'3' -> 3, '0.5' -> 0.5, 'true' -> True, anything else stays a string."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def add_model_args(parser: argparse.ArgumentParser, positional: bool = False) -> None:
    g = parser.add_argument_group("model")
    if positional:
        g.add_argument("model", help="model name (see `cifarlab models`)")
    else:
        g.add_argument("--model", default="s8-net", help="model name (see `cifarlab models`; default s8-net)")
    g.add_argument("--norm", help="normalisation: bn | gn | ln (| none where the model allows)")
    g.add_argument("--groups", type=int, help="GroupNorm group count (with --norm gn)")
    g.add_argument("--dropout", type=float, help="dropout probability")
    g.add_argument("--model-opt", "-O", action="append", default=[], metavar="KEY=VALUE",
                   help="any other model option, e.g. -O skips=true -O width=40 (repeatable)")


def model_config(args: argparse.Namespace) -> ModelConfig:
    options: dict[str, Any] = {k: getattr(args, k) for k in MODEL_FLAGS if getattr(args, k) is not None}
    for item in args.model_opt:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--model-opt expects KEY=VALUE, got '{item}'")
        options[key.replace("-", "_")] = parse_value(value)
    return ModelConfig(name=args.model, options=options)


def add_data_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("data")
    g.add_argument("--data", metavar="DIR", help="CIFAR-10 folder (default: $CIFARLAB_DATA, then ./data)")
    g.add_argument("--download", action="store_true", help="download CIFAR-10 into ./data if not found")
    g.add_argument("--val", type=int, default=0, metavar="N", help="hold out N training images for validation")
    g.add_argument("--subset", type=int, default=0, metavar="N", help="train on N images only (quick runs)")
    g.add_argument("--augment", default=TrainConfig.augment, choices=AUGMENTS,
                   help=f"none | flip | crop (reflect-pad 4 + flip; default {TrainConfig.augment})")
    g.add_argument("--alt-flip", action="store_true",
                   help="mirror each image in every other epoch (from a random start) instead of at random")


def add_train_args(parser: argparse.ArgumentParser) -> None:
    o, t, r0 = OptimConfig(), TrainConfig(), RegConfig()
    g = parser.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=t.epochs)
    g.add_argument("--batch-size", type=int, default=t.batch_size)
    g.add_argument("--optimizer", default=o.name, help="sgd | adam | adamw")
    g.add_argument("--lr", type=float, default=o.lr, help="(peak) learning rate")
    g.add_argument("--momentum", type=float, default=o.momentum)
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=o.nesterov)
    g.add_argument("--weight-decay", type=float, default=o.weight_decay, help="optimizer decay of conv/linear kernels")
    g.add_argument("--schedule", default=o.schedule, help="none | step | onecycle | plateau | linear")
    g.add_argument("--step-epochs", type=int, default=o.step_epochs, help="step: epochs between decays")
    g.add_argument("--gamma", type=float, default=o.gamma, help="step/plateau: lr factor")
    g.add_argument("--warmup", type=float, default=o.warmup, help="linear/onecycle: warm-up fraction")
    g.add_argument("--final-lr", type=float, default=o.final_lr, help="linear: final lr / peak lr")
    g.add_argument("--norm-lr-scale", type=float, default=o.norm_lr_scale,
                   help="lr multiplier for biases and norm parameters")
    r = parser.add_argument_group("regularisation")
    for name in ("l1-conv", "l1-dense", "l2-conv", "l2-dense"):
        r.add_argument(f"--{name}", type=float, default=0.0, metavar="LAMBDA",
                       help=f"{name.split('-')[0].upper()} penalty on {name.split('-')[1]} kernels (Keras)")
    r.add_argument("--label-smoothing", type=float, default=r0.label_smoothing)
    r.add_argument("--ema", type=float, default=0.0, help="weight EMA decay per step (0 = off)")
    x = parser.add_argument_group("run")
    x.add_argument("--seed", type=int, default=0)
    x.add_argument("--device", default="auto", help="auto | cpu | cuda")
    x.add_argument("--precision", default="auto", help="auto | bf16 | fp32")
    x.add_argument("--compile", default="auto", choices=COMPILE_CHOICES, help="auto = on with CUDA, off on CPU")
    x.add_argument("--cuda-graph", default=t.cuda_graph, choices=("auto", "on", "off"),
                   help="capture the whole training step as one CUDA graph (auto = off until measured)")
    x.add_argument("--tta", action="store_true", help="also report flip test-time-augmented accuracy")
    x.add_argument("--max-params", type=positive_int, metavar="N", help="refuse a model with more trainable parameters")


def run_config(args: argparse.Namespace) -> RunConfig:
    optim = OptimConfig(name=args.optimizer, lr=args.lr, momentum=args.momentum, nesterov=args.nesterov,
                        weight_decay=args.weight_decay, schedule=args.schedule, step_epochs=args.step_epochs,
                        gamma=args.gamma, warmup=args.warmup, final_lr=args.final_lr,
                        norm_lr_scale=args.norm_lr_scale)
    reg = RegConfig(l1_conv=args.l1_conv, l1_dense=args.l1_dense, l2_conv=args.l2_conv,
                    l2_dense=args.l2_dense, label_smoothing=args.label_smoothing)
    train = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, augment=args.augment,
                        alt_flip=args.alt_flip, optim=optim, reg=reg, device=args.device, precision=args.precision,
                        compile=args.compile, cuda_graph=args.cuda_graph, tta=args.tta, ema=args.ema)
    data = DataConfig(root=args.data, download=args.download, val=args.val, subset=args.subset)
    return RunConfig(data=data, model=model_config(args), train=train, max_params=args.max_params)
