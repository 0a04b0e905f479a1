"""`s8-net`: the C1 C2 c3 P1 C3 C4 C5 c6 P2 C7 C8 C9 GAP C10 layout under 50,000 parameters.

C = 3x3 conv block (conv -> ReLU -> norm -> dropout), c = 1x1 transition, P = 2x2 max-pool,
GAP = global average pool, C10 = 1x1 conv to the classes. C1 and C2 are unpadded (32 -> 30 -> 28),
C3..C9 padded, so the maps are 28 -> 14 -> 7 and the receptive field at GAP input is 44.
"""
from __future__ import annotations

from torch import nn

from cifarlab.layers import DEFAULT_GROUPS, DEFAULT_NORM, NormFactory, norm_layer
from cifarlab.models.registry import register_model


class ConvBlock(nn.Sequential):
    """conv(k) -> ReLU -> norm -> dropout: the course's block order."""

    def __init__(self, c_in: int, c_out: int, norm: NormFactory | None, dropout: float,
                 kernel: int = 3, padding: int = 1) -> None:
        layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, padding=padding, bias=norm is None),
                                   nn.ReLU(inplace=True)]
        if norm is not None:
            layers.append(norm(c_out))
        if dropout:
            layers.append(nn.Dropout(dropout))
        super().__init__(*layers)


class S8Net(nn.Module):
    def __init__(self, widths: tuple[int, ...], norm: NormFactory | None, dropout: float, skips: bool,
                 num_classes: int = 10) -> None:
        super().__init__()
        w1, w2, t1, w3, t2, w4 = widths
        self.skips = skips
        self.C1 = ConvBlock(3, w1, norm, dropout, padding=0)
        self.C2 = ConvBlock(w1, w2, norm, dropout, padding=0)
        self.c3 = nn.Conv2d(w2, t1, 1, bias=False)
        self.P1 = nn.MaxPool2d(2)
        self.C3 = ConvBlock(t1, w3, norm, dropout)
        self.C4 = ConvBlock(w3, w3, norm, dropout)
        self.C5 = ConvBlock(w3, w3, norm, dropout)
        self.c6 = nn.Conv2d(w3, t2, 1, bias=False)
        self.P2 = nn.MaxPool2d(2)
        self.C7 = ConvBlock(t2, w4, norm, dropout)
        self.C8 = ConvBlock(w4, w4, norm, dropout)
        self.C9 = ConvBlock(w4, w4, norm, dropout)
        self.GAP = nn.AdaptiveAvgPool2d(1)
        self.C10 = nn.Conv2d(w4, num_classes, 1, bias=False)

    def forward(self, x):  # x: (B, 3, 32, 32)
        x = self.P1(self.c3(self.C2(self.C1(x))))  # (B, t1, 14, 14)
        x = self.C3(x)
        y = self.C5(self.C4(x))
        x = y + x if self.skips else y  # skip: C3's output added to C5's
        x = self.P2(self.c6(x))  # (B, t2, 7, 7)
        x = self.C7(x)
        y = self.C9(self.C8(x))
        x = y + x if self.skips else y  # skip: C7's output added to C9's
        return self.C10(self.GAP(x)).flatten(1)  # (B, classes)


@register_model("s8-net")
def s8_net(norm: str = DEFAULT_NORM, groups: int = DEFAULT_GROUPS, dropout: float = 0.0, skips: bool = False,
           width: int = 32) -> nn.Module:
    """C1 C2 c3 P1 C3 C4 C5 c6 P2 C7 C8 C9 GAP C10 with --norm bn|gn|ln (about 48k params)."""
    # width=32: C1 16, C2 32, c3 16, C3-C5 28, c6 16, C7-C9 32 -> 47,504 conv weights + norms.
    widths = (width // 2, width, width // 2, width * 7 // 8, width // 2, width)
    return S8Net(widths, norm_layer(norm, groups), dropout, skips)
