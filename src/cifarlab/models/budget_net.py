"""`budget-net`: a plain net designed to make the most of 50,000 parameters in 20 epochs.

stem 3x3 conv -> three stages of [conv3x3 -> maxpool2 -> norm -> act -> conv3x3 -> norm -> act]
-> global max-pool -> linear. Pooling right after the first conv of a stage halves the cost of
the norm/act that follow; global max-pool (not average) measured better at this width.
"""
from __future__ import annotations

from torch import nn

from cifarlab.layers import NormFactory, act_layer, norm_layer
from cifarlab.models.registry import register_model


class Stage(nn.Module):
    def __init__(self, c_in: int, c_out: int, norm: NormFactory, act: type[nn.Module]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = norm(c_out)
        self.act1 = act()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = norm(c_out)
        self.act2 = act()

    def forward(self, x):
        x = self.act1(self.norm1(self.pool(self.conv1(x))))
        return self.act2(self.norm2(self.conv2(x)))


class BudgetNet(nn.Module):
    def __init__(self, stem: int, widths: tuple[int, int, int], norm: NormFactory, act: type[nn.Module],
                 logit_scale: float, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, stem, 3, padding=1, bias=False), norm(stem), act())
        stages, c_in = [], stem
        for w in widths:
            stages.append(Stage(c_in, w, norm, act))
            c_in = w
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(c_in, num_classes, bias=False)
        self.logit_scale = logit_scale

    def forward(self, x):  # (B, 3, 32, 32) -> (B, classes)
        x = self.pool(self.stages(self.stem(x))).flatten(1)
        return self.head(x) * self.logit_scale


@register_model("budget-net")
def budget_net(norm: str = "bn", groups: int = 4, act: str = "gelu", stem: int = 20, w1: int = 24,
               w2: int = 32, w3: int = 36, logit_scale: float = 1.0) -> nn.Module:
    """stem + 3 conv-pool-norm stages + global max-pool, <= 50k params, --norm bn|gn|ln."""
    norm_f = norm_layer(norm, groups) or (lambda c: nn.Identity())
    return BudgetNet(stem, (w1, w2, w3), norm_f, act_layer(act), logit_scale)

