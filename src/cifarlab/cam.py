"""Grad-CAM (Selvaraju et al., 2017): which parts of a conv layer's map a class score draws on.

For class c and a conv layer's output A (C, h, w): alpha_k = mean over (h, w) of d score_c / d A_k, and
the map is ReLU(sum_k alpha_k A_k), at the layer's resolution. Two hooks do it: a forward hook keeps
the layer's output, and one backward pass per target class gives its gradient. The score is what the
model outputs for the class (a logit; a log-probability for a log-softmax model).

The default layer is the last conv layer whose output map is at least 8x8 (from the layer table):
later maps are sharper in meaning but too coarse to point at anything in a 32x32 image (s8-net's
C7-C9 are 7x7, budget-net's last stage 4x4).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cifarlab.errors import ConfigError
from cifarlab.layers import in_mode
from cifarlab.mistakes import CAM_SIZE, MAX_MISTAKES, Cams, top_mistakes

MIN_MAP = 8  # the default layer's map is at least MIN_MAP x MIN_MAP


def conv_layers(model: nn.Module, table=None) -> list[tuple[str, str, tuple[int, int]]]:
    """(module name, label, output (h, w)) of every nn.Conv2d in forward order.

    From the layer table (`cifarlab inspect`'s rows) when one is given or can be made; a model the
    analysis cannot trace is probed with forward hooks on one blank image instead.
    """
    from cifarlab.analysis import AnalysisError, layer_table

    modules = dict(model.named_modules())
    if table is None:
        try:
            table = layer_table(model, (3, 32, 32))
        except AnalysisError:
            return _probe(model)
    return [(r.name, r.label, tuple(r.n_out)) for r in table.rows
            if r.n_out is not None and isinstance(modules.get(r.name), nn.Conv2d)]


@torch.no_grad()
def _probe(model: nn.Module) -> list[tuple[str, str, tuple[int, int]]]:
    found: dict[str, tuple[int, int]] = {}
    hooks = [m.register_forward_hook(lambda mod, i, out, name=name: found.__setitem__(name, tuple(out.shape[-2:])))
             for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    ref = next(iter(model.parameters()), None)
    try:
        with in_mode(model):
            model(torch.zeros(2, 3, 32, 32, device=ref.device if ref is not None else None))
    finally:
        for h in hooks:
            h.remove()
    return [(name, name, size) for name, size in found.items()]  # dict order = first call order


def pick_layer(model: nn.Module, name: str | None = None, table=None) -> tuple[str, tuple[int, int]]:
    """The Grad-CAM layer: `name` (a module name or its label in the layer table), else the default.

    ConfigError naming the candidates when `name` is not a conv layer of the model.
    """
    convs = conv_layers(model, table)
    if not convs:
        raise ConfigError("the model has no nn.Conv2d layer to take a Grad-CAM map from")
    if name is not None:
        for module, label, size in convs:
            if name in (module, label):
                return module, size
        shown = ", ".join(f"{label} ({h}x{w})" for _, label, (h, w) in convs)
        raise ConfigError(f"--cam-layer '{name}' is not a conv layer of this model (conv layers: {shown})")
    big = [(m, size) for m, _, size in convs if min(size) >= MIN_MAP]
    return big[-1] if big else max(((m, s) for m, _, s in convs), key=lambda c: c[1][0] * c[1][1])


def grad_cam(model: nn.Module, x: torch.Tensor, targets: Sequence[torch.Tensor], layer: str) -> torch.Tensor:
    """Grad-CAM maps (N, len(targets), h, w) >= 0 of images `x` (N, 3, H, W) at module `layer`, in eval mode;
    `targets[t]` holds one class index per image. Parameters' .grad are left untouched."""
    module = model.get_submodule(layer)
    kept: dict[str, torch.Tensor] = {}

    def keep(mod, inputs, out):
        kept["a"] = out
        # The rest of the net gets a copy: an in-place op after the layer (s8-net's ReLU(inplace=True))
        # would otherwise overwrite the map we differentiate with its rectified values.
        return out.clone()

    handle = module.register_forward_hook(keep)
    try:
        with in_mode(model), torch.enable_grad():
            # Requiring a gradient at the input keeps a graph even when every layer below is frozen.
            scores = model(x.detach().float().requires_grad_(True)).float()
            a = kept["a"]  # (N, C, h, w)
            maps = []
            for t in targets:
                # Images are independent in eval mode, so the gradient of the summed scores is each image's own.
                chosen = scores.gather(1, t.to(scores.device).long().view(-1, 1)).sum()
                (grad,) = torch.autograd.grad(chosen, a, retain_graph=True)
                weights = grad.mean((2, 3), keepdim=True)  # alpha_k: (N, C, 1, 1)
                maps.append(F.relu((weights * a).sum(1)))
    finally:
        handle.remove()
    return torch.stack(maps, 1).detach()


def for_display(maps: torch.Tensor, size: int = CAM_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Maps (N, T, h, w) -> bilinearly upsampled to size x size and scaled to [0, 1] each, and their peaks (N, T)."""
    n, t = maps.shape[:2]
    up = F.interpolate(maps.float().reshape(n * t, 1, *maps.shape[2:]), size=(size, size), mode="bilinear",
                       align_corners=False).reshape(n, t, size, size).clamp_(min=0)
    peaks = up.amax((2, 3))
    scaled = up / peaks.clamp(min=1e-12)[..., None, None]
    return scaled.cpu().numpy(), peaks.cpu().numpy()


def mistake_cams(model: nn.Module, test_x: torch.Tensor, test_logits: torch.Tensor, labels: torch.Tensor,
                 table=None, k: int = MAX_MISTAKES) -> Cams | None:
    """Grad-CAM, for the predicted and the true class, of the run's `k` most confident test mistakes.

    Ranked from the probabilities as predictions.npz stores them (float16), so the report's grid picks
    the same images; None when the run made no mistake or its logits are not finite (a diverged run).
    """
    probs16 = torch.softmax(test_logits.float().cpu(), 1).numpy().astype(np.float16)
    if not np.isfinite(probs16).all():
        return None
    y = labels.cpu().numpy()
    pick = top_mistakes(probs16, y, k)
    if len(pick) == 0:
        return None
    layer, size = pick_layer(model, None, table)
    device = next(iter(model.parameters())).device
    predicted = probs16.astype(np.float32)[pick].argmax(1)
    targets = [torch.from_numpy(predicted), torch.from_numpy(y[pick])]
    maps, peaks = for_display(grad_cam(model, test_x[torch.from_numpy(pick)].to(device), targets, layer))
    return Cams(pick, predicted, y[pick], maps, peaks, layer, size)
