"""`keras-cnn`: the classic Keras CIFAR-10 course baseline with the usual experiment switches."""
from __future__ import annotations

from torch import nn

from cifarlab.layers import norm_layer
from cifarlab.models.registry import register_model


class KerasCNN(nn.Module):
    """conv-conv-pool blocks (3x3 'same' convs, ReLU), flatten, dense, dense(10)."""

    def __init__(self, widths: list[int], dense_units: int, norm: str, dropout_conv: float,
                 dropout_dense: float, num_classes: int = 10) -> None:
        super().__init__()
        norm_f = norm_layer(norm)
        blocks: list[nn.Module] = []
        c_in = 3
        for width in widths:
            layers: list[nn.Module] = []
            for _ in range(2):
                layers.append(nn.Conv2d(c_in, width, 3, padding=1, bias=norm_f is None))
                if norm_f is not None:
                    layers.append(norm_f(width))  # Keras course order: conv -> BN -> ReLU
                layers.append(nn.ReLU(inplace=True))
                c_in = width
            layers.append(nn.MaxPool2d(2))
            if dropout_conv:
                layers.append(nn.Dropout(dropout_conv))
            blocks.append(nn.Sequential(*layers))
        self.features = nn.Sequential(*blocks)
        side = 32 // 2 ** len(widths)  # (B, C, side, side) after the pools
        head: list[nn.Module] = [nn.Flatten(), nn.Linear(c_in * side * side, dense_units), nn.ReLU(inplace=True)]
        if dropout_dense:
            head.append(nn.Dropout(dropout_dense))
        head.append(nn.Linear(dense_units, num_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x):
        return self.classifier(self.features(x))


@register_model("keras-cnn")
def keras_cnn(norm: str = "none", dropout_conv: float = 0.0, dropout_dense: float = 0.0,
              extra_block: bool = False, wide: bool = False, dense_units: int = 512) -> nn.Module:
    """Keras course baseline: conv32-conv32-pool-conv64-conv64-pool-dense512-dense10 (2.17M params)."""
    widths = [64, 128] if wide else [32, 64]  # wide: feature maps 32->64 and 64->128
    if extra_block:
        widths.append(128)  # a third block of two 128-filter convs
    return KerasCNN(widths, dense_units, norm, dropout_conv, dropout_dense)
