"""Exporting a run's model for use outside cifarlab: ONNX (the `[onnx]` extra) or TorchScript.

The exported model takes float32 images in [0, 1], NCHW (N, 3, 32, 32), RGB, any batch size N, and returns the model's
(N, classes) scores: the run's normalisation ((x - mean) / std, from model.pt) is folded into the
graph, so no one can feed it images normalised with other statistics, or not at all. The class names
and that input convention are stored with it (ONNX metadata_props; TorchScript extra files).

A parity check then runs the exported file (onnxruntime, or torch.jit.load) against the PyTorch
model on real test images: max absolute score difference and top-1 agreement.
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cifarlab.errors import CifarlabError

FORMATS = ("onnx", "torchscript")
OPSET = 18  # the opset torch's dynamo exporter targets by default (2.9-2.14); onnxruntime 1.17+ runs it
INPUT = "images: float32 (N, 3, 32, 32) in [0, 1], RGB; normalisation is inside the model"
MIN_AGREEMENT = 0.999  # top-1 agreement below this fails the export
MAX_DIFF = 1e-3  # max |score difference| above this (relative to the largest |score|, at least 1) fails it


class ExportError(CifarlabError):
    """The export could not be made or does not match the PyTorch model."""


class Normalised(nn.Module):
    """`model` with the run's normalisation in front: takes images in [0, 1]."""

    def __init__(self, model: nn.Module, mean, std) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x):  # (N, 3, H, W) in [0, 1]
        return self.model((x - self.mean) / self.std)


def onnx_missing() -> str | None:
    """The extra's package that cannot be imported, or None when all are there."""
    import importlib.util

    for name in ("onnx", "onnxscript", "onnxruntime"):
        if importlib.util.find_spec(name) is None:
            return name
    return None


def _metadata(classes, mean, std) -> dict[str, str]:
    return {"classes": json.dumps(list(classes)), "input": INPUT, "mean": json.dumps(list(mean)),
            "std": json.dumps(list(std)), "producer": "cifarlab"}


def export_onnx(wrapped: nn.Module, path: Path, metadata: dict[str, str]) -> None:
    """Write `wrapped` as ONNX with a dynamic batch axis and `metadata` in metadata_props."""
    import onnx

    example = torch.rand(2, 3, 32, 32)
    batch = torch.export.Dim("batch", min=1)
    quiet = logging.getLogger("torch.onnx")  # "torchvision is not installed. Skipping torchvision::nms", ...
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and progress chatter
        try:
            program = torch.onnx.export(wrapped, (example,), dynamo=True, input_names=["images"],
                                        output_names=["scores"], dynamic_shapes={"x": {0: batch}}, opset_version=OPSET,
                                        verbose=False)
        except Exception as exc:  # noqa: BLE001 - an op the exporter cannot translate, a data-dependent branch, ...
            raise ExportError(f"the ONNX exporter failed ({exc.__class__.__name__}: "
                              f"{(str(exc).strip().splitlines() or [''])[0][:200]})") from None
        finally:
            quiet.setLevel(level)
    proto = program.model_proto
    for key, value in metadata.items():
        proto.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.save(proto, str(path))


def export_torchscript(wrapped: nn.Module, path: Path, metadata: dict[str, str]) -> None:
    """Write `wrapped` traced with torch.jit.trace (any batch size: these nets have no batch-dependent code)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript is deprecated upstream in favour of torch.export
        try:
            traced = torch.jit.trace(wrapped, torch.rand(2, 3, 32, 32), check_trace=False)
        except Exception as exc:  # noqa: BLE001
            raise ExportError(f"torch.jit.trace failed ({exc.__class__.__name__}: "
                              f"{(str(exc).strip().splitlines() or [''])[0][:200]})") from None
        torch.jit.save(traced, str(path), _extra_files={f"{k}.txt": v for k, v in metadata.items()})


@dataclass(frozen=True)
class Parity:
    images: int
    max_abs_diff: float
    max_abs_score: float
    agreement: float  # fraction of images whose top-1 class is the same

    @property
    def ok(self) -> bool:
        return self.agreement >= MIN_AGREEMENT and self.max_abs_diff <= MAX_DIFF * max(1.0, self.max_abs_score)

    def line(self, fmt: str) -> str:
        runtime = "onnxruntime" if fmt == "onnx" else "torch.jit.load"
        return (f"parity ({runtime} vs PyTorch) on {self.images:,} test images: max |score difference| "
                f"{self.max_abs_diff:.2e} (largest |score| {self.max_abs_score:.3g}), top-1 agreement "
                f"{100 * self.agreement:.2f}%")


def run_exported(path: Path, fmt: str, x: np.ndarray, batch: int = 500) -> np.ndarray:
    """Scores of the exported file on images `x` (N, 3, 32, 32) float32 in [0, 1], in batches of `batch`."""
    outs = []
    if fmt == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for i in range(0, len(x), batch):
            outs.append(session.run(None, {name: x[i: i + batch]})[0])
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "torch.jit.load is deprecated" (2.10+)
            loaded = torch.jit.load(str(path), map_location="cpu")
        with torch.no_grad():
            for i in range(0, len(x), batch):
                outs.append(loaded(torch.from_numpy(x[i: i + batch])).numpy())
    return np.concatenate(outs)


def parity(wrapped: nn.Module, path: Path, fmt: str, images_u8: np.ndarray) -> Parity:
    """Compare the exported file with `wrapped` on (N, 32, 32, 3) uint8 images; odd batch sizes on purpose."""
    x = np.ascontiguousarray(images_u8.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)
    # Batches of 500 and a ragged rest (when N is not a multiple): a fixed batch axis would fail here.
    exported = run_exported(path, fmt, x)
    with torch.no_grad():
        reference = torch.cat([wrapped(torch.from_numpy(x[i: i + 1000])) for i in range(0, len(x), 1000)]).numpy()
    diff = float(np.abs(exported - reference).max())
    agree = float((exported.argmax(1) == reference.argmax(1)).mean())
    return Parity(len(x), diff, float(np.abs(reference).max()), agree)


def export(run, fmt: str, out: str | os.PathLike) -> tuple[Path, nn.Module]:
    """Write the run's model (inference.LoadedRun) in `fmt` to `out` atomically; (path, the wrapped model)."""
    out = Path(out)
    wrapped = Normalised(run.model, run.mean, run.std).eval()
    metadata = _metadata(run.classes, run.mean, run.std)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        (export_onnx if fmt == "onnx" else export_torchscript)(wrapped, tmp, metadata)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, wrapped
