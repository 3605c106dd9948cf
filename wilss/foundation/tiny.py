"""The tiny foundation models of the synthetic default, registered with their libraries on import.

- ``wilss-tiny-clip-fcn`` (the shipped tiny CLIP): a 3-layer text tower of width 64 over the standard
  49408-token vocabulary, a 64-d joint space, and a timm vision tower ``wilss_tiny_fcn`` (below, a conv net
  of bounded receptive field) average-pooled and linearly projected (``model_configs/*.json``, added with
  ``open_clip.add_model_config``).
- ``wilss-tiny-clip``: a ViT vision tower at 64 px (patch 8, width 128, 4 layers) with the same text tower:
  the open_clip ViT code path (MaskCLIP) at tiny size, used by the tests at random init. Trained
  (``pretrain_synthetic --clip vit``), its class maps stay at chance, so it ships no weights.
- ``wilss-tiny-clip-rn`` (tried): the same with the ``resnet-tiny`` trunk, for LiT-style training on the
  locked trunk (``pretrain_synthetic --clip lit-rn``): it recognises classes but does not localise them.
- ``wilss_tiny_resnet``: ``resnet-tiny`` (``wilss.models.tiny``) at output stride 8 as a timm model
  (``num_features`` 256, ``forward_features`` -> (B, 256, H/8, W/8), ``reset_classifier``), so open_clip's
  ``TimmModel`` can wrap it; it takes open_clip-normalised input.
- ``wilss_tiny_vit``: a timm ViT (64 px, patch 8, width 128, depth 4, 4 heads, no classifier), registered
  as a timm model entrypoint, so ``timm.create_model("wilss_tiny_vit")`` builds it.

Their weights (``weights/*.pt``, fp16) come from ``wilss.foundation.pretrain_synthetic``: the CLIP trained
contrastively and the ViT self-supervised (DINO), both on synthetic scenes drawn with another seed than
the benchmark. The config value ``synthetic`` loads them through the ordinary local-file path.
"""

from __future__ import annotations

from pathlib import Path

import open_clip
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from wilss.data.transforms import MEAN, STD
from wilss.models.tiny import TinyResNet

TINY_CLIP = "wilss-tiny-clip"
TINY_CLIP_RN = "wilss-tiny-clip-rn"
TINY_VIT = "wilss_tiny_vit"
TINY_RESNET = "wilss_tiny_resnet"
TINY_CLIP_FCN = "wilss-tiny-clip-fcn"
TINY_FCN = "wilss_tiny_fcn"
WEIGHTS_DIR = Path(__file__).parent / "weights"
CLIP_WEIGHTS = WEIGHTS_DIR / "clip_tiny_synthetic.pt"  # TINY_CLIP_FCN's
VIT_WEIGHTS = WEIGHTS_DIR / "vit_tiny_synthetic.pt"

for _name in (TINY_CLIP, TINY_CLIP_RN, TINY_CLIP_FCN):
    if _name not in open_clip.list_models():
        open_clip.add_model_config(Path(__file__).parent / "model_configs" / f"{_name}.json")

# timm reads ``default_cfgs`` of the entrypoint's module when registering it: input size and the
# normalisation (ImageNet's, which pretrain_synthetic trains with too).
default_cfgs = generate_default_cfgs({
    TINY_VIT: {"input_size": (3, 64, 64), "num_classes": 0, "mean": IMAGENET_DEFAULT_MEAN,
               "std": IMAGENET_DEFAULT_STD, "crop_pct": 1.0},
    # Fed open_clip's (OpenAI) normalisation: the trunk converts it to the ImageNet one it was trained on.
    TINY_RESNET: {"input_size": (3, 64, 64), "pool_size": (8, 8), "num_classes": 0,
                  "mean": open_clip.OPENAI_DATASET_MEAN, "std": open_clip.OPENAI_DATASET_STD, "crop_pct": 1.0},
    TINY_FCN: {"input_size": (3, 64, 64), "pool_size": (8, 8), "num_classes": 0,
               "mean": open_clip.OPENAI_DATASET_MEAN, "std": open_clip.OPENAI_DATASET_STD, "crop_pct": 1.0},
})


@register_model
def wilss_tiny_vit(pretrained: bool = False, **kwargs) -> VisionTransformer:
    args = {"img_size": 64, "patch_size": 8, "embed_dim": 128, "depth": 4, "num_heads": 4, "num_classes": 0}
    return build_model_with_cfg(VisionTransformer, TINY_VIT, pretrained, **{**args, **kwargs})


class TimmTinyResNet(nn.Module):
    """``resnet-tiny`` (``wilss.models.tiny``, output stride 8) behind the timm interface open_clip's
    ``TimmModel`` uses: ``num_features``, ``reset_classifier``, ``forward_features`` and ``forward_head``.

    Input is normalised with open_clip's default (OpenAI) statistics, as every open_clip tower gets it;
    the first step maps it back to the ImageNet normalisation the trunk was pretrained with
    (``wilss.models.pretrain_tiny``), so the shipped trunk weights see the inputs they know.
    """

    def __init__(self, num_classes: int = 0, global_pool: str = "avg", output_stride: int = 8, in_chans: int = 3):
        super().__init__()
        if in_chans != 3:
            raise ValueError(f"{TINY_RESNET} takes RGB images (in_chans=3), not in_chans={in_chans}")
        self.trunk = TinyResNet(output_stride=output_stride)
        self.num_features = self.trunk.out_channels
        self.output_stride = output_stride
        # x_imagenet = x_clip * scale + shift, per channel; not in the state dict (a fixed conversion).
        clip_mean, clip_std = torch.tensor(open_clip.OPENAI_DATASET_MEAN), torch.tensor(open_clip.OPENAI_DATASET_STD)
        mean, std = torch.tensor(MEAN), torch.tensor(STD)
        self.register_buffer("scale", (clip_std / std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((clip_mean - mean) / std).view(1, 3, 1, 1), persistent=False)
        self.reset_classifier(num_classes, global_pool)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"{TINY_RESNET}: global_pool must be 'avg' or '', not '{global_pool}'")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) open_clip-normalised -> (B, C, H/8, W/8) trunk features."""
        return self.trunk(x * self.scale + self.shift)["out"]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, C, h, w) -> (B, C) average over locations (or unpooled with global_pool=''), then fc."""
        x = x.mean((2, 3)) if self.global_pool == "avg" else x
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def wilss_tiny_resnet(pretrained: bool = False, **kwargs) -> TimmTinyResNet:
    return build_model_with_cfg(TimmTinyResNet, TINY_RESNET, pretrained, **kwargs)


def _conv(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class TimmTinyFCN(nn.Module):
    """A plain 3x3-conv net of output stride 8 whose locations see 29 px of a 64-px image (its receptive
    field), behind the same timm interface as ``TimmTinyResNet``: the vision tower of ``wilss-tiny-clip-fcn``.

    Average pooling then a linear projection make the image embedding the mean of per-location
    embeddings (a CAM), and the bounded receptive field keeps each of them about its own neighbourhood:
    what dense CLIP scores need. ``resnet-tiny``'s dilated stages let every location see the whole image,
    so its per-location embeddings name the image's classes everywhere (``pretrain_synthetic``).
    """

    def __init__(self, num_classes: int = 0, global_pool: str = "avg", widths: tuple[int, int, int] = (32, 64, 128),
                 in_chans: int = 3):
        super().__init__()
        if in_chans != 3:
            raise ValueError(f"{TINY_FCN} takes RGB images (in_chans=3), not in_chans={in_chans}")
        a, b, c = widths
        # receptive field 3, 5, 9, 13, 21, 29 px after each conv (strides 1, 2, 1, 2, 1, 2: output stride 8)
        self.features = nn.Sequential(*_conv(3, a, 1), *_conv(a, a, 2), *_conv(a, b, 1), *_conv(b, b, 2),
                                      *_conv(b, c, 1), *_conv(c, c, 2), nn.Conv2d(c, c, 1))
        self.num_features = c
        self.reset_classifier(num_classes, global_pool)

    reset_classifier = TimmTinyResNet.reset_classifier
    get_classifier = TimmTinyResNet.get_classifier
    forward_head = TimmTinyResNet.forward_head
    forward = TimmTinyResNet.forward

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) open_clip-normalised -> (B, C, H/8, W/8)."""
        return self.features(x)


@register_model
def wilss_tiny_fcn(pretrained: bool = False, **kwargs) -> TimmTinyFCN:
    return build_model_with_cfg(TimmTinyFCN, TINY_FCN, pretrained, **kwargs)
