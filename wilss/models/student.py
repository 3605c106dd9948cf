"""The student: torchvision DeepLabV3 (dilated ResNet + ASPP) with classifiers that grow per step.

Layout of the output channels: ``heads[0]`` predicts background + the step-0 classes, ``heads[t]``
the classes step t adds; logits are their concatenation, in task order (channel = task-order index).
Options for DKD (METHOD.md §3.1), both off by default: ``aux_classifier`` makes channel 0 a separate
1-channel classifier on *detached* features (the auxiliary classifier, in place of a background
channel; ``heads[0]`` is then that classifier and ``heads[1]`` the step-0 classes), and ``last_conv``
adds a 3x3 conv-BN-ReLU after the ASPP.
Backbones: torchvision ResNet-101/50/18 (ImageNet weights via torchvision when they can be had, or a
local file) and ``resnet-tiny``, a narrow dilated ResNet for CPU presets (``wilss.models.tiny``).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet
from torchvision.models._utils import IntermediateLayerGetter

from wilss.errors import ConfigError
from wilss.models.aspp import build_aspp
from wilss.models.tiny import TinyResNet

TINY_WEIGHTS = Path(__file__).parent / "weights" / "resnet_tiny_synthetic.pt"


# name -> (constructor, torchvision ImageNet weights or None, output channels of layer4)
BACKBONES = {
    "resnet-tiny": (TinyResNet, None, 256),
    "resnet18": (resnet.resnet18, resnet.ResNet18_Weights.IMAGENET1K_V1, 512),
    "resnet50": (resnet.resnet50, resnet.ResNet50_Weights.IMAGENET1K_V1, 2048),
    "resnet101": (resnet.resnet101, resnet.ResNet101_Weights.IMAGENET1K_V1, 2048),
}


def build_backbone(name: str, output_stride: int = 16, pretrained: str = "") -> tuple[nn.Module, int]:
    """A ResNet body returning ``{"out": (B, C, H/os, W/os)}`` and its channel count C."""
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone '{name}': choose one of {', '.join(BACKBONES)}")
    ctor, weights, channels = BACKBONES[name]
    if ctor is TinyResNet:
        if pretrained == "synthetic":
            pretrained = str(TINY_WEIGHTS)
        if pretrained == "imagenet":
            raise ConfigError(f"backbone '{name}' has no ImageNet weights: set model.pretrained='' or a file")
        net = TinyResNet(output_stride=output_stride)
        if pretrained:
            load_backbone_file(net, pretrained)
        return net, channels
    # Dilate the last stage (os 16) or the last two (os 8) instead of striding.
    dilate = [False, False, True] if output_stride == 16 else [False, True, True]
    if name == "resnet18":  # BasicBlock cannot dilate: keep strides (os 32), the ASPP still works
        dilate = None
    kwargs = {"replace_stride_with_dilation": dilate} if dilate else {}
    if pretrained == "imagenet":
        if weights is None:
            raise ConfigError(f"backbone '{name}' has no ImageNet weights: set model.pretrained='' or a file")
        try:
            net = ctor(weights=weights, **kwargs)
        except Exception as e:  # noqa: BLE001 - offline, hub and file errors all mean: no weights
            raise ConfigError(f"cannot load ImageNet weights for '{name}' ({type(e).__name__}: {e}); "
                              f"download {weights.url} and pass the file as model.pretrained=PATH") from None
    else:
        net = ctor(**kwargs)
        if pretrained:
            load_backbone_file(net, pretrained)
    return IntermediateLayerGetter(net, {"layer4": "out"}), channels


def load_backbone_file(net: nn.Module, path: str) -> None:
    """Load a backbone state dict (e.g. torchvision's ``resnet101-63fe2227.pth``); the fc may be absent."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"model.pretrained file {file} does not exist: give a backbone checkpoint "
                          f"path, 'imagenet', or '' for random init")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated, not a checkpoint, a pickle with code
        raise ConfigError(f"model.pretrained: cannot read {file} ({type(e).__name__}): give a backbone state "
                          f"dict saved with torch.save, 'imagenet', or '' for random init") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ConfigError(f"{file} does not fit the backbone: missing {missing[:3]}, unexpected "
                          f"{unexpected[:3]}; give a checkpoint of the same architecture")


class Student(nn.Module):
    """DeepLabV3: backbone -> ASPP -> per-step 1x1 classifiers -> bilinear upsampling."""

    def __init__(self, backbone: nn.Module, backbone_channels: int, step_sizes: list[int],
                 aspp_channels: int = 256, output_stride: int = 16, aux_classifier: bool = False,
                 last_conv: bool = False):
        super().__init__()
        self.backbone = backbone
        self.aspp = build_aspp(backbone_channels, aspp_channels, output_stride)
        # DKD's extra 3x3 conv after the ASPP projection; Identity (no parameters) otherwise.
        self.last_conv = nn.Identity()
        if last_conv:
            self.last_conv = nn.Sequential(nn.Conv2d(aspp_channels, aspp_channels, 3, padding=1, bias=False),
                                           nn.BatchNorm2d(aspp_channels), nn.ReLU(inplace=True))
        self.heads = nn.ModuleList()
        self.aspp_channels = aspp_channels
        self.aux_classifier = aux_classifier
        for i, n in enumerate(step_sizes):
            if i == 0 and aux_classifier:  # the "+1" of step 0 is the auxiliary channel
                self.add_head(1)
                n -= 1
            self.add_head(n)

    @property
    def n_classes(self) -> int:
        return sum(h.out_channels for h in self.heads)

    def add_head(self, n: int) -> nn.Conv2d:
        """Grow the classifier by ``n`` channels (one new step)."""
        head = nn.Conv2d(self.aspp_channels, n, 1)
        ref = next(self.aspp.parameters())
        self.heads.append(head.to(device=ref.device, dtype=ref.dtype))
        return head

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> backbone features (B, C, H/os, W/os)."""
        return self.backbone(x)["out"]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> ASPP features (B, aspp_channels, H/os, W/os)."""
        return self.head_features(self.encode(x))

    def head_features(self, e: torch.Tensor) -> torch.Tensor:
        """Backbone features (B, C, h, w) -> ASPP (+ last conv) features (B, aspp_channels, h, w)."""
        return self.last_conv(self.aspp(e))

    def classify(self, f: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) -> logits (B, n_classes, h, w), without upsampling."""
        if self.aux_classifier:  # no gradient from the auxiliary classifier into the features
            return torch.cat([self.heads[0](f.detach()), *[h(f) for h in self.heads[1:]]], dim=1)
        return torch.cat([h(f) for h in self.heads], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> logits (B, n_classes, H, W)."""
        return F.interpolate(self.classify(self.features(x)), size=x.shape[-2:], mode="bilinear",
                             align_corners=False)

    def head_parameters(self) -> list[nn.Parameter]:
        return [*self.aspp.parameters(), *self.last_conv.parameters(), *self.heads.parameters()]


def set_bn_momentum(model: nn.Module, momentum: float) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = momentum
