"""`cifarlab export RUN_DIR --format onnx|torchscript`: the run's model as a file for other runtimes."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cifarlab.errors import CifarlabError, ConfigError

EXIT_MISMATCH = 1  # the exported file disagrees with PyTorch: a verdict on the export, as inspect --max-params


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a run's model to ONNX or TorchScript, with a parity check",
                       description="Export the model of a run folder. The exported model takes float32 images "
                                   "in [0, 1], NCHW (N, 3, 32, 32), RGB, any batch size N: the run's normalisation (mean/std) is "
                                   "folded into the graph. It returns the model's class scores (N, 10); the class "
                                   "names are stored in the file (ONNX metadata_props 'classes'; TorchScript extra "
                                   "file classes.txt). The file is then checked against PyTorch on real test "
                                   "images (onnxruntime for ONNX): max |score difference| and top-1 agreement are "
                                   "printed, and an agreement below 99.9% or a difference above 1e-3 of the "
                                   "largest score exits 1 without writing the file. ONNX needs the extra: "
                                   "pip install 'cifarlab[onnx]'.")
    p.add_argument("run", metavar="RUN_DIR", help="a run folder written by `cifarlab train`")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx", help="onnx (default) | torchscript")
    p.add_argument("--out", metavar="FILE", help="output file (default: RUN_DIR/model.onnx, or RUN_DIR/model.ts.pt "
                   "for torchscript)")
    p.add_argument("--data", metavar="DIR", help="CIFAR-10 folder for the parity check's test images (default: "
                   "$CIFARLAB_DATA, then ./data)")
    p.add_argument("--check-images", type=int, default=2000, metavar="N",
                   help="test images in the parity check (default 2000; 0 skips the check)")
    p.add_argument("--trust-code", action="store_true",
                   help="as for predict: load a file model from the run folder's model_source.py (runs its code)")


def run(args: argparse.Namespace) -> int:
    if args.check_images < 0:
        raise ConfigError(f"--check-images must be >= 0, got {args.check_images}")
    if args.format == "onnx":
        from cifarlab.export import onnx_missing

        missing = onnx_missing()
        if missing:
            raise ConfigError(f"ONNX export needs {missing}, which is not installed: pip install 'cifarlab[onnx]'")
    from cifarlab.export import export, parity
    from cifarlab.inference import load_run

    loaded = load_run(args.run, trust_code=args.trust_code)
    out = Path(args.out or Path(args.run) / ("model.onnx" if args.format == "onnx" else "model.ts.pt"))
    if out.is_dir():
        raise ConfigError(f"--out '{out}' is a folder; name a file")
    images = None
    if args.check_images:
        from cifarlab.data import load_cifar10

        try:
            ds = load_cifar10(args.data)
        except CifarlabError as exc:
            raise ConfigError(f"the parity check needs CIFAR-10's test images ({exc}); pass --data DIR, or "
                              "--check-images 0 to skip it") from None
        images = ds.test_x[: args.check_images]
    tmp, wrapped = export(loaded, args.format, out)
    try:
        if images is not None:
            result = parity(wrapped, tmp, args.format, images)
            print(result.line(args.format))
            if not result.ok:
                print(f"cifarlab export: error: the exported model does not match PyTorch; '{out}' was not written",
                      file=sys.stderr)
                return EXIT_MISMATCH
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    size = out.stat().st_size
    print(f"wrote {out} ({size / 1024:.0f} KiB, {args.format}): input float32 (N, 3, 32, 32) RGB in [0, 1], "
          f"normalisation inside; output (N, {len(loaded.classes)}) class scores")
    return 0
