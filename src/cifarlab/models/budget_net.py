"""`budget-net`: a plain net designed to make the most of 50,000 parameters in 20 epochs.

stem 3x3 conv -> three stages of [conv3x3 -> maxpool2 -> norm -> act -> conv3x3 -> norm -> act]
-> global max-pool -> linear. Pooling right after the first conv of a stage halves the cost of
the norm/act that follow. Global max-pool rather than average is a choice, not a measured gain: in
a short pilot the two were within seed noise, 47.8 +/- 2.2% (max) vs 49.1 +/- 2.1% (average) val
accuracy, n=3 seeds (0-2) each, Welch p=0.51 (default TrainConfig on 1 CPU thread, 5 epochs on 5,000
training images beside a 5,000-image val split, split seed 0: `python bench/pool_pilot.py {max,avg} SEED`).

Options beyond widths and norm (the budget counts trainable parameters only):
- `pool="late"` pools after the second conv of each stage instead of the first, so that conv sees
  4x the positions (about 1.7x the FLOPs of the net, same parameter count).
- `whiten=True` replaces the 3x3 stem by a frozen 2x2 conv whose 24 filters whiten image patches
  (set from the training images before training; see `WhiteningStem`), then norm + act. Its 288
  weights are fixed, so they are non-trainable parameters outside the trainable budget. The stem
  is then 24 channels wide whatever `stem` says.
- `dirac=True` starts every conv with at least as many outputs as inputs as an identity map on
  its first `c_in` filters (the rest keep the default init), so early training passes the input
  through instead of noise; known to speed up short runs of plain nets.
"""
from __future__ import annotations

import torch
from torch import nn

from cifarlab.errors import ConfigError
from cifarlab.layers import DEFAULT_GROUPS, DEFAULT_NORM, NormFactory, act_layer, norm_layer
from cifarlab.models.registry import register_model


POOLS = ("early", "late")


class Stage(nn.Module):
    def __init__(self, c_in: int, c_out: int, norm: NormFactory, act: type[nn.Module], pool: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.pool1 = nn.MaxPool2d(2) if pool == "early" else nn.Identity()
        self.norm1 = norm(c_out)
        self.act1 = act()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.pool2 = nn.MaxPool2d(2) if pool == "late" else nn.Identity()
        self.norm2 = norm(c_out)
        self.act2 = act()

    def forward(self, x):
        x = self.act1(self.norm1(self.pool1(self.conv1(x))))
        return self.act2(self.norm2(self.pool2(self.conv2(x))))


class WhiteningStem(nn.Module):
    """Frozen 2x2 conv that decorrelates the 12 values of every 2x2 RGB patch, then norm + act.

    The filters are the eigenvectors of the patch covariance, scaled by 1/sqrt(eigenvalue), each
    also with its negative so the activation keeps both signs (24 channels, 31x31 maps). Learning
    this first layer is the slow part of a short run; whitened inputs let the next convs start on
    decorrelated features (the frozen "patch-whitening" layer of fast CIFAR-10 training scripts).
    """

    channels = 24

    def __init__(self, norm: NormFactory, act: type[nn.Module], eps: float = 5e-4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, self.channels, 2, bias=False)
        self.conv.weight.requires_grad_(False)
        self.norm = norm(self.channels)
        self.act = act()
        self.eps = eps

    def forward(self, x):
        return self.act(self.norm(self.conv(x)))

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor) -> None:
        """Set the filters from (N, 3, H, W) normalised training images (a thousand are plenty)."""
        patches = images.float().unfold(2, 2, 1).unfold(3, 2, 1)  # (N, 3, H-1, W-1, 2, 2)
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 12).double()  # rows in (c, kh, kw) order
        cov = patches.T @ patches / patches.shape[0]
        eigvals, eigvecs = torch.linalg.eigh(cov)
        filters = (eigvecs.T / (eigvals + self.eps).sqrt()[:, None]).reshape(12, 3, 2, 2)
        self.conv.weight.copy_(torch.cat([filters, -filters]).to(self.conv.weight))


def dirac_init_(model: nn.Module) -> None:
    """Identity-initialise the first c_in filters of every trainable conv with c_out >= c_in."""
    for m in model.modules():
        if (isinstance(m, nn.Conv2d) and m.out_channels >= m.in_channels and m.groups == 1
                and m.weight.requires_grad):
            with torch.no_grad():
                nn.init.dirac_(m.weight[: m.in_channels])


class BudgetNet(nn.Module):
    def __init__(self, stem: int, widths: tuple[int, int, int], norm: NormFactory, act: type[nn.Module],
                 logit_scale: float, pool: str = "early", whiten: bool = False, num_classes: int = 10) -> None:
        super().__init__()
        if whiten:
            self.stem: nn.Module = WhiteningStem(norm, act)
            stem = WhiteningStem.channels
        else:
            self.stem = nn.Sequential(nn.Conv2d(3, stem, 3, padding=1, bias=False), norm(stem), act())
        stages, c_in = [], stem
        for w in widths:
            stages.append(Stage(c_in, w, norm, act, pool))
            c_in = w
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(c_in, num_classes, bias=False)
        self.logit_scale = logit_scale

    def forward(self, x):  # (B, 3, 32, 32) -> (B, classes)
        x = self.pool(self.stages(self.stem(x))).flatten(1)
        return self.head(x) * self.logit_scale

    def init_from_data(self, images: torch.Tensor) -> None:
        """Data-dependent initialisation; the trainer calls it once, before the first step."""
        if isinstance(self.stem, WhiteningStem):
            self.stem.init_from_data(images)


@register_model("budget-net")
def budget_net(norm: str = DEFAULT_NORM, groups: int = DEFAULT_GROUPS, act: str = "gelu", stem: int = 20, w1: int = 24,
               w2: int = 32, w3: int = 36, logit_scale: float = 1.0, pool: str = "early",
               dirac: bool = False, whiten: bool = False) -> nn.Module:
    """stem + 3 conv-pool-norm stages + global max-pool, <= 50k params, --norm bn|gn|ln."""
    if pool not in POOLS:
        raise ConfigError(f"unknown pool placement '{pool}' (choose from {', '.join(POOLS)})")
    norm_f = norm_layer(norm, groups) or (lambda c: nn.Identity())
    model = BudgetNet(stem, (w1, w2, w3), norm_f, act_layer(act), logit_scale, pool, whiten)
    if dirac:
        dirac_init_(model)
    return model

