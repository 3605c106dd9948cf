"""WILSON's localizer g (METHOD.md §4.3): a small conv head on the encoder features that predicts
background, old and new classes at the feature stride. WILSON uses iABN (BN + leaky ReLU 0.01)."""

from __future__ import annotations

from torch import nn


class Localizer(nn.Sequential):
    """(B, C, h, w) encoder features -> (B, n_classes, h, w) logits:
    conv3x3-BN-LeakyReLU, conv3x3-BN-LeakyReLU, conv1x1."""

    def __init__(self, in_channels: int, n_classes: int, hidden: int = 256):
        super().__init__(
            nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden),
            nn.LeakyReLU(0.01, inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden),
            nn.LeakyReLU(0.01, inplace=True),
            nn.Conv2d(hidden, n_classes, 1),
        )
