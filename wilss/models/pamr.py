"""PAMR: pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020), as WILSON uses it (§4.3 item 4).

Class maps are propagated between neighbouring pixels of similar colour: for every pixel, the 8
neighbours of a 3x3 window at each dilation get the affinity ``-|I_i - I_j| / (1e-8 + 0.1 σ_i)``
(σ_i: the std of the image over the pixel's 9-point windows at all dilations), averaged over colour
channels and softmax-normalised over all neighbours; the maps are then averaged over neighbours with
these weights, ``iters`` times. No parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]  # 3x3 window, centre at index 4


def neighbours(x: torch.Tensor, dilations: tuple[int, ...], centre: bool = False) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, P, H, W): the 3x3 neighbours at every dilation (replicate padding);
    P = 8 (or 9 with ``centre``) per dilation, in dilation-major order."""
    h, w = x.shape[-2:]
    out = []
    for d in dilations:
        padded = F.pad(x, [d] * 4, mode="replicate")
        for dy, dx in _OFFSETS:
            if (dy, dx) == (0, 0) and not centre:
                continue
            out.append(padded[..., d + dy * d: d + dy * d + h, d + dx * d: d + dx * d + w])
    return torch.stack(out, dim=2)


class PAMR(nn.Module):
    def __init__(self, iters: int = 10, dilations: tuple[int, ...] = (1, 2, 4, 8, 12)):
        super().__init__()
        self.iters, self.dilations = iters, tuple(dilations)

    def affinity(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) image -> (B, P, H, W) neighbour weights, summing to 1 over P."""
        std = neighbours(image, self.dilations, centre=True).std(dim=2, keepdim=True)  # (B, 3, 1, H, W)
        diff = (neighbours(image, self.dilations) - image[:, :, None]).abs()  # (B, 3, P, H, W)
        return (-diff / (1e-8 + 0.1 * std)).mean(dim=1).softmax(dim=1)

    @torch.no_grad()
    def forward(self, image: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """image (B, 3, H, W) (any colour scale), masks (B, K, h, w) -> refined masks (B, K, H, W)."""
        image = image.float()
        masks = F.interpolate(masks.float(), size=image.shape[-2:], mode="bilinear", align_corners=True)
        aff = self.affinity(image)[:, None]  # (B, 1, P, H, W)
        for _ in range(self.iters):
            masks = (neighbours(masks, self.dilations) * aff).sum(dim=2)
        return masks
