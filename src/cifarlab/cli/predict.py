"""`cifarlab predict RUN_DIR IMAGE...`: classify your own images with a trained run."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cifarlab.errors import EXIT_BAD_INPUT, ConfigError

TOP = 3


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help="classify image files with a trained run (top-3 classes, Grad-CAM)",
                       description="Classify image files (PNG, JPEG, WebP, BMP, GIF, TIFF, ...: whatever Pillow "
                                   "reads, any size) with the model of a run folder. Each image is converted to "
                                   "RGB (transparency on white, EXIF rotation applied), centre-cropped to a square "
                                   "and resized to 32x32 with Pillow's antialiased bilinear filter, then normalised "
                                   "with the run's own mean and std. Prints the top-3 classes per image. A file "
                                   "that cannot be read is one line on stderr; the others are still classified, "
                                   "and the exit code is 2.")
    p.add_argument("run", metavar="RUN_DIR", help="a run folder written by `cifarlab train` (or a study's "
                   "EXPERIMENT/seed-K)")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files, or folders: a folder means the image "
                   "files directly in it (by extension, sorted by name; subfolders are not searched)")
    p.add_argument("--format", choices=("table", "json"), default="table", help="table (default) | json")
    p.add_argument("--tta", action="store_true", help="average the image and its mirror image (flip TTA)")
    p.add_argument("--cam", metavar="OUT_DIR", help="also write a Grad-CAM figure per image, for its predicted "
                   "class, as OUT_DIR/<image name>.gradcam.png")
    p.add_argument("--cam-layer", metavar="NAME", help="the conv layer for Grad-CAM, as `cifarlab inspect` names "
                   "it (default: the last conv layer whose map is at least 8x8)")
    p.add_argument("--trust-code", action="store_true",
                   help="a model from a file whose original is gone or changed is loaded from the run folder's "
                        "model_source.py, which runs that code: only for folders you trust")


def _table(rows: list[tuple[str, list[tuple[str, float]]]]) -> str:
    header = ["image"] + ["1st", "2nd", "3rd"][:TOP]
    cells = [[name] + [f"{cls} {100 * p:.1f}%" for cls, p in top] for name, top in rows]
    widths = [max(len(r[i]) for r in [header] + cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header] + cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cam_names(files: list[Path], out: Path) -> list[Path]:
    """OUT_DIR/<stem>.gradcam.png, numbered where two images share a stem."""
    seen: dict[str, int] = {}
    names = []
    for f in files:
        k = seen[f.stem] = seen.get(f.stem, 0) + 1
        names.append(out / (f"{f.stem}.gradcam.png" if k == 1 else f"{f.stem}-{k}.gradcam.png"))
    return names


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from cifarlab.inference import ImageError, expand_inputs, load_image, load_run, normalise, probabilities, top_k

    loaded = load_run(args.run, trust_code=args.trust_code)
    layer = None
    if args.cam or args.cam_layer:
        from cifarlab.cam import pick_layer

        layer, size = pick_layer(loaded.model, args.cam_layer)  # an unknown name fails before any image is read
    files, failed = expand_inputs(args.images)
    images, names = [], []
    for f in files:
        try:
            images.append(load_image(f))
            names.append(f)
        except ImageError as exc:
            failed.append((f, str(exc).removeprefix(f"{f}: ")))
    for path, why in failed:
        print(f"cifarlab predict: error: {path}: {why}", file=sys.stderr)
    results = []
    if images:
        batch = np.stack(images)
        x = normalise(batch, loaded.mean, loaded.std)
        probs = probabilities(loaded.model, x, tta=args.tta)
        results = list(zip(map(str, names), top_k(probs, loaded.classes, TOP)))
        if args.cam:
            from cifarlab.cam import for_display, grad_cam
            from cifarlab.report.gradcam import cam_figure

            out = Path(args.cam)
            if out.exists() and not out.is_dir():
                raise ConfigError(f"--cam '{out}' is a file, not a folder")
            out.mkdir(parents=True, exist_ok=True)
            predicted = probs.argmax(1)
            maps, _ = for_display(grad_cam(loaded.model, x, [predicted], layer))
            inputs, targets = {p.resolve() for p in names}, _cam_names(names, out)
            clash = next((t for t in targets if t.resolve() in inputs), None)
            if clash is not None:  # checked before writing any: never write over an image being classified
                raise ConfigError(f"--cam '{out}' would overwrite the input image '{clash}'")
            for i, (path, target) in enumerate(zip(names, targets)):
                cls, p = results[i][1][0]
                title = f"{path.name}: {cls} {100 * p:.1f}%"
                target.write_bytes(cam_figure(batch[i], maps[i, 0], title,
                                              f"Grad-CAM for '{cls}' at layer {layer} ({size[0]}x{size[1]} map)"))
    if args.format == "json":
        doc = [{"image": name, "top": [{"class": c, "probability": round(p, 6)} for c, p in top]}
               for name, top in results]
        doc += [{"image": str(path), "error": why} for path, why in failed]
        print(json.dumps(doc, indent=2))
    elif results:
        print(_table(results))
    if args.cam and results:
        print(f"Grad-CAM: {len(results)} figure(s) in {args.cam}/", file=sys.stderr if args.format == "json"
              else sys.stdout)
    return EXIT_BAD_INPUT if failed else 0
