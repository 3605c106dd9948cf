"""The tiny foundation models of the synthetic default, registered with their libraries on import.

- ``wilss-tiny-clip``: an open_clip architecture (``model_configs/wilss-tiny-clip.json``: a ViT vision
  tower at 64 px, patch 8, width 128, 4 layers; a 3-layer text tower of width 64 over the standard
  49408-token vocabulary; 64-d joint space), added with ``open_clip.add_model_config``.
- ``wilss-tiny-clip-rn`` (experimental, no shipped weights): the same text tower and joint space, with
  a timm vision tower ``wilss_tiny_resnet`` (below) average-pooled and linearly projected; for LiT-style
  training on the locked ``resnet-tiny`` trunk (``pretrain_synthetic --clip lit-rn``), which leaves its
  class maps above chance but weak (11.9 mIoU against 9.6 for an all-ones mask), so it is not the default.
- ``wilss_tiny_resnet``: ``resnet-tiny`` (``wilss.models.tiny``) at output stride 8 as a timm model
  (``num_features`` 256, ``forward_features`` -> (B, 256, H/8, W/8), ``reset_classifier``), so open_clip's
  ``TimmModel`` can wrap it; it takes open_clip-normalised input.
- ``wilss_tiny_vit``: a timm ViT (64 px, patch 8, width 128, depth 4, 4 heads, no classifier), registered
  as a timm model entrypoint, so ``timm.create_model("wilss_tiny_vit")`` builds it.

Their weights (``weights/*.pt``, fp16) come from ``wilss.foundation.pretrain_synthetic``: CLIP trained
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
WEIGHTS_DIR = Path(__file__).parent / "weights"
CLIP_WEIGHTS = WEIGHTS_DIR / "clip_tiny_synthetic.pt"
VIT_WEIGHTS = WEIGHTS_DIR / "vit_tiny_synthetic.pt"

for _name in (TINY_CLIP, TINY_CLIP_RN):
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
