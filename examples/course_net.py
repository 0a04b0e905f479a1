"""A course-assignment network, written the way the assignment asks for it: C1 C2 c3 P1 C3 C4 C5 c6 P2 C7 C8
C9 GAP C10 under 50,000 parameters, the normalisation chosen by a string ("bn", "gn" or "ln"), two residual
adds, global average pooling and a log-softmax output.

    cifarlab inspect examples/course_net.py:Net --norm ln
    cifarlab train --model examples/course_net.py:Net --norm gn --epochs 20

C = 3x3 conv -> ReLU -> norm -> dropout; c = 1x1 conv (fewer channels); P = 2x2 max-pool.
"""
import torch.nn as nn
import torch.nn.functional as F

from cifarlab.layers import norm_layer


class Net(nn.Module):
    def __init__(self, norm: str = "bn", groups: int = 4, dropout: float = 0.05):
        super().__init__()
        Norm = norm_layer(norm, groups)  # "bn" | "gn" | "ln" -> a layer factory, called as Norm(channels)

        def block(c_in, c_out, padding=1):
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=padding, bias=False), nn.ReLU(),
                                 Norm(c_out), nn.Dropout(dropout))

        self.C1 = block(3, 12, padding=0)  # 32x32 -> 30x30, receptive field 3
        self.C2 = block(12, 24, padding=0)  # -> 28x28, RF 5
        self.c3 = nn.Conv2d(24, 12, 1, bias=False)
        self.P1 = nn.MaxPool2d(2)  # -> 14x14, RF 6
        self.C3 = block(12, 24)
        self.C4 = block(24, 24)
        self.C5 = block(24, 24)  # RF 18
        self.c6 = nn.Conv2d(24, 16, 1, bias=False)
        self.P2 = nn.MaxPool2d(2)  # -> 7x7, RF 20
        self.C7 = block(16, 32)
        self.C8 = block(32, 32)
        self.C9 = block(32, 32)  # RF 44
        self.GAP = nn.AdaptiveAvgPool2d(1)
        self.C10 = nn.Conv2d(32, 10, 1, bias=False)

    def forward(self, x):
        x = self.P1(self.c3(self.C2(self.C1(x))))
        x = self.C3(x)
        x = x + self.C5(self.C4(x))  # residual add around C4 C5
        x = self.P2(self.c6(x))
        x = self.C7(x)
        x = x + self.C9(self.C8(x))  # residual add around C8 C9
        x = self.C10(self.GAP(x))
        x = x.view(-1, 10)
        return F.log_softmax(x, dim=-1)
