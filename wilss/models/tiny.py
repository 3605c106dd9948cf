"""A narrow dilated ResNet for CPU presets: the same shape of computation as the paper's ResNet-101
(four residual stages, stride 4 stem, the last stages dilated for output stride 8 or 16), at ~1% of the
cost. Used by the synthetic default; real runs use torchvision's ResNet-101.
"""

from __future__ import annotations

import torch
from torch import nn


class Block(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection (a ResNet basic block that can dilate)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.down is None else self.down(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class TinyResNet(nn.Module):
    """(B, 3, H, W) -> {"out": (B, widths[-1], H/os, W/os)}, the interface of IntermediateLayerGetter."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 256), output_stride: int = 8):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True),
            nn.Conv2d(widths[0], widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )  # stride 4
        stages, stride, dilation = [], 4, 1
        cin = widths[0]
        for i, w in enumerate(widths):
            s = 1 if i == 0 else 2
            if stride * s > output_stride:  # past the output stride: dilate instead of striding
                s, dilation = 1, dilation * 2
            stride *= s
            stages.append(Block(cin, w, s, dilation))
            cin = w
        self.stages = nn.Sequential(*stages)
        self.out_channels = widths[-1]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.stages(self.stem(x))}
