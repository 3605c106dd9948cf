"""FMWISS's plug-in teacher (METHOD.md §5.3): an ASPP head on the student's encoder features.

It predicts every seen class with sigmoids (background, old, new: the pseudo masks train bg + new,
copy-paste trains old) and a pixel embedding for the dense contrastive loss. It reads the same
encoder output as the student's own ASPP, so one backbone pass serves both.
"""

from __future__ import annotations

import torch
from torch import nn

from wilss.models.aspp import build_aspp


class PlugInTeacher(nn.Module):
    def __init__(self, in_channels: int, n_classes: int, channels: int = 256, embed_dim: int = 64,
                 output_stride: int = 16):
        super().__init__()
        self.aspp = build_aspp(in_channels, channels, output_stride)
        self.classifier = nn.Conv2d(channels, n_classes, 1)
        self.embed = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
                                   nn.Conv2d(channels, embed_dim, 1))

    def forward(self, encoded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C_enc, h, w) encoder features -> (logits (B, n_classes, h, w), embeddings (B, E, h, w))."""
        f = self.aspp(encoded)
        return self.classifier(f), self.embed(f)
