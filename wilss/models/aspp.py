"""DeepLabV3's ASPP (torchvision's), whose atrous convolutions skip the taps that only read padding.

An atrous 3x3 conv with dilation d and "same" padding reads, for output pixel i, input pixels
i - d, i, i + d. On a map of height H <= d the outer rows of taps fall outside [0, H) for *every*
output pixel: they multiply zero padding. Small feature maps make this common (the synthetic preset:
64 px crops at output stride 8 give 8x8 maps, and the rates 12, 24, 36 reach past all of them; at VOC
scale, full-image evaluation of small images). ``AtrousConv2d`` then convolves with the taps that can
read the image only, and a smaller padding: the same output (a sum without exact zeros), the same
gradient (the skipped taps get zero, as from the full conv), the same parameters and state dict, at a
third of the cost or less. Maps large enough for every tap run the ordinary conv.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP, ASPPConv


class AtrousConv2d(nn.Conv2d):
    """``nn.Conv2d`` (stride 1, odd kernel, padding = dilation * (k - 1) / 2) that skips padding-only taps."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = [_reach(k, d, n) for k, d, n in zip(self.kernel_size, self.dilation, x.shape[-2:])]
        (rh, ph), (rw, pw) = keep
        ch, cw = (k // 2 for k in self.kernel_size)
        if rh == ch and rw == cw:  # every tap can read the image
            return super().forward(x)
        weight = self.weight[:, :, ch - rh:ch + rh + 1, cw - rw:cw + rw + 1]
        return F.conv2d(x, weight, self.bias, 1, (ph, pw), self.dilation, self.groups)

    @classmethod
    def convert_(cls, conv: nn.Conv2d) -> AtrousConv2d:
        """Make ``conv`` itself an ``AtrousConv2d`` (same parameters; no new init, so no random draw)."""
        k, d, p = conv.kernel_size, conv.dilation, conv.padding
        if conv.stride != (1, 1) or any(n % 2 == 0 or q != e * (n // 2) for n, e, q in zip(k, d, p)) \
                or conv.padding_mode != "zeros":
            raise ValueError(f"AtrousConv2d needs stride 1, an odd kernel and zero 'same' padding, not {conv}")
        conv.__class__ = cls
        return conv


def _reach(k: int, d: int, n: int) -> tuple[int, int]:
    """(taps each side of the centre that can read a map of size n, the padding they need)."""
    r = min(k // 2, (n - 1) // d)  # a tap at offset j * d reads the map iff j * d < n
    return r, r * d


def build_aspp(in_channels: int, channels: int, output_stride: int) -> ASPP:
    """torchvision's ASPP (1x1 branch, three atrous branches, image pooling, projection with dropout
    0.5) with DeepLabV3's rates: 6, 12, 18 at output stride 16, twice that at 8."""
    rates = [6, 12, 18] if output_stride == 16 else [12, 24, 36]
    aspp = ASPP(in_channels, rates, channels)
    for branch in aspp.convs:
        if isinstance(branch, ASPPConv):
            AtrousConv2d.convert_(branch[0])
    return aspp
