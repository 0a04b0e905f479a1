"""Using a trained run: load its model from the run folder, read images of any size, classify them.

`load_run(folder)` rebuilds the model from `model.pt` (weights + config, loaded with
`weights_only=True`, so reading it runs no code). A registry model is cifarlab's own code. A model
from a file means importing that file, which runs it, and a run folder may come from someone else:
so the file is imported from its recorded original path only when it is still there with the
recorded sha256 and lies outside the Python installation (your own file, unchanged); otherwise
only with `trust_code=True`, from the run folder's copy `model_source.py`. Either way only a class
or function the file defines itself is called.
"""
from __future__ import annotations

import hashlib
import os
import site
import sys
import sysconfig
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cifarlab.config import ModelConfig, SettingError, from_dict
from cifarlab.data import normalise  # noqa: F401 - images as the run's training images were normalised
from cifarlab.errors import CifarlabError, ConfigError

MODEL_FILE = "model.pt"
SOURCE_COPY = "model_source.py"  # experiment.SOURCE_COPY
IMAGE_SIZE = 32  # CIFAR-10's side, the size every run trains at
TRUST_FLAG = "--trust-code"


class RunError(CifarlabError):
    """A folder that is not a usable run (no model.pt, a damaged one, code that may not be run)."""


class ImageError(CifarlabError):
    """A file that cannot be read as an image."""


@dataclass
class LoadedRun:
    """A run's model in eval mode on the CPU, with what its inputs need."""

    folder: Path
    model: nn.Module
    config: dict[str, Any]  # the run's config.json, as model.pt holds it
    classes: tuple[str, ...]
    mean: tuple[float, float, float]  # per channel, images in [0, 1]
    std: tuple[float, float, float]
    source: str  # where the model's code came from: "registry", the original file, or the run's copy


# ---------------------------------------------------------------------------------------------
# The run folder


def _checkpoint(folder: Path) -> dict[str, Any]:
    path = folder / MODEL_FILE
    if not folder.is_dir():
        raise RunError(f"'{folder}' is not a folder" if folder.exists() else f"'{folder}' does not exist")
    if not path.is_file():
        raise RunError(f"'{folder}' is not a finished cifarlab run (it has no {MODEL_FILE})")
    try:
        # weights_only: tensors and plain containers only; a crafted pickle cannot run code here.
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error line says enough
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated zip, not a torch file, a refused pickle, ...
        why = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:160]
        raise RunError(f"'{path}' is damaged or not a cifarlab model ({exc.__class__.__name__}: {why})") from None
    ok = isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict) and isinstance(ckpt.get("config"), dict)
    if not ok:
        raise RunError(f"'{path}' is not a cifarlab model (no state_dict and config)")
    return ckpt


def _stats(ckpt: dict[str, Any], path: Path) -> tuple[tuple[str, ...], tuple[float, ...], tuple[float, ...]]:
    classes, mean, std = ckpt.get("classes"), ckpt.get("mean"), ckpt.get("std")
    good = (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)
            and all(isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)
                    for v in (mean, std)) and all(x > 0 for x in std))
    if not good:
        raise RunError(f"'{path}' lacks its classes or normalisation (mean/std); was it written by cifarlab train?")
    return tuple(classes), tuple(float(x) for x in mean), tuple(float(x) for x in std)


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _python_places() -> list[Path]:
    """Folders of the Python installation and its packages: no model file of yours lives there."""
    places = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *sysconfig.get_paths().values()}
    try:
        places.update(site.getsitepackages())
        places.add(site.getusersitepackages())
    except AttributeError:  # some embedded interpreters lack them
        pass
    places.add(str(Path(__file__).parent))  # cifarlab itself
    return [Path(p).resolve() for p in places if p]


def _own_file(source: dict[str, Any]) -> str | None:
    """Why the recorded original model file may not be imported without --trust-code; None when it may."""
    path = Path(str(source.get("path", "")))
    if not path.is_absolute() or not path.is_file():
        return f"{path} is not there any more"
    if _sha256(path) != source.get("sha256"):
        return f"{path} changed since the run trained"
    real = path.resolve()
    if any(real == p or p in real.parents for p in _python_places()):
        # A folder from elsewhere could name a file every installation has (os.py, with its well-known
        # sha256) and call one of its functions with options of its choosing.
        return f"{path} belongs to the Python installation, not to a model of yours"
    return None


def _model(folder: Path, cfg: ModelConfig, trust_code: bool) -> tuple[nn.Module, str]:
    from cifarlab.models import create_model, is_external
    from cifarlab.models.external import create_external

    if not is_external(cfg.name):
        return create_model(cfg.name, **cfg.options), "registry"
    source = cfg.source
    if not isinstance(source.get("path"), str) or not isinstance(source.get("sha256"), str):
        raise RunError(f"'{folder}' records no source file for model '{cfg.name}'")
    problem = _own_file(source)
    if problem is None:
        return create_external(cfg, recorded=True), source["path"]
    copy = folder / SOURCE_COPY
    if not trust_code:
        raise RunError(f"model '{cfg.name}' is not loaded: its file {problem}, and loading the run folder's copy "
                       f"{SOURCE_COPY} would run code that came with the folder; pass {TRUST_FLAG} if you trust "
                       "where this folder came from")
    if not copy.is_file():
        raise RunError(f"model '{cfg.name}': its file {problem}, and '{folder}' holds no {SOURCE_COPY}")
    if _sha256(copy) != source["sha256"]:
        raise RunError(f"'{copy}' is not the file the run trained (its sha256 differs from the recorded one)")
    # The copy is imported as a plain file (a module model's package siblings are not in the run folder).
    copied = {"path": str(copy.resolve()), "object": source.get("object", ""), "sha256": source["sha256"]}
    return create_external(replace(cfg, source=copied), recorded=True), str(copy)


def load_run(folder: str | os.PathLike, trust_code: bool = False) -> LoadedRun:
    """The run's trained model (eval mode, CPU) and its classes and normalisation; RunError in one line."""
    folder = Path(folder)
    ckpt = _checkpoint(folder)
    path = folder / MODEL_FILE
    classes, mean, std = _stats(ckpt, path)
    config = ckpt["config"]
    try:
        cfg = from_dict(ModelConfig, config.get("model") if isinstance(config.get("model"), dict) else {})
    except SettingError as exc:
        raise RunError(f"'{path}' records a model config cifarlab cannot read (model.{exc})") from None
    try:
        model, where = _model(folder, cfg, trust_code)
    except ConfigError as exc:
        raise RunError(f"'{folder}': {exc}") from None
    try:
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, ValueError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise RunError(f"'{path}': the weights do not fit model '{cfg.name}' ({first})") from None
    return LoadedRun(folder, model.eval(), config, classes, mean, std, where)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Images


def image_extensions() -> frozenset[str]:
    """File extensions Pillow reads ('.png', '.jpg', '.webp', ...)."""
    from PIL import Image

    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def expand_inputs(paths: list[str | os.PathLike]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(files to read, (path, problem) for arguments that give none).

    A file is taken as given, whatever its name. A folder gives the image files directly in it (not in
    its subfolders), by extension, sorted by name; hidden files are skipped.
    """
    files, problems = [], []
    extensions = image_extensions()
    for arg in map(Path, paths):
        if arg.is_dir():
            found = sorted(p for p in arg.iterdir()
                           if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in extensions)
            if not found:
                problems.append((arg, "the folder holds no image files (it is not searched recursively)"))
            files += found
        elif arg.is_file():
            files.append(arg)
        else:
            problems.append((arg, "no such file or folder" if not arg.exists() else "not a file or folder"))
    return files, problems


def load_image(path: str | os.PathLike, size: int = IMAGE_SIZE) -> np.ndarray:
    """An image file as (size, size, 3) uint8 RGB: centre-cropped to a square, then resized.

    Centre crop, not a squeeze: the net saw undistorted objects; squashing a 4:3 photo to a square
    changes every shape by a third, while CIFAR-10's objects rarely touch the borders a crop removes.
    The resize is Pillow's bilinear filter, which widens with the shrink factor (antialiased): a
    4000-pixel photo is averaged down, not sampled every 125th pixel. Transparent pixels become white;
    EXIF rotation (phone photos) is applied. ImageError, one line, for anything unreadable.
    """
    from PIL import Image, ImageOps

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # a huge image is refused, not warned
            with Image.open(path) as im:
                im.load()  # decode now: a truncated file fails here, not later
                im = ImageOps.exif_transpose(im)
                if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                    rgba = im.convert("RGBA")
                    im = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                    im.alpha_composite(rgba)
                im = im.convert("RGB")
    except Exception as exc:  # noqa: BLE001 - UnidentifiedImageError, truncated data, bombs, odd modes, ...
        why = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        why = why.replace(str(path), "").replace("''", "").strip(" :") or exc.__class__.__name__
        raise ImageError(f"{path}: not a readable image ({why})") from None
    w, h = im.size
    side = min(w, h)
    box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    # Crop first: resize(box=...) would let the filter reach past the box into the cropped-off borders.
    im = im.crop(box).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.uint8)


def probabilities(model: nn.Module, x: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """Softmax probabilities (N, classes), averaged logits over the image and its mirror with `tta`.

    A log-softmax model's outputs give the same probabilities (softmax ignores a per-row shift).
    """
    from cifarlab.train import predict

    return torch.softmax(predict(model, x, batch_size=256, tta=tta), 1)


def top_k(probs: torch.Tensor, classes: tuple[str, ...], k: int = 3) -> list[list[tuple[str, float]]]:
    """Per image the `k` likeliest classes with their probabilities, likeliest first."""
    values, index = probs.topk(min(k, probs.shape[1]), dim=1)
    return [[(classes[i], float(v)) for v, i in zip(vs, ix)] for vs, ix in zip(values.tolist(), index.tolist())]
