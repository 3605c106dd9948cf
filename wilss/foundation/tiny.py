"""The tiny foundation models of the synthetic default, registered with their libraries on import.

- ``wilss-tiny-clip``: an open_clip architecture (``model_configs/wilss-tiny-clip.json``: a ViT vision
  tower at 64 px, patch 8, width 128, 4 layers; a 3-layer text tower of width 64 over the standard
  49408-token vocabulary; 64-d joint space), added with ``open_clip.add_model_config``.
- ``wilss_tiny_vit``: a timm ViT (64 px, patch 8, width 128, depth 4, 4 heads, no classifier), registered
  as a timm model entrypoint, so ``timm.create_model("wilss_tiny_vit")`` builds it.

Their weights (``weights/*.pt``, fp16) come from ``wilss.foundation.pretrain_synthetic``: CLIP trained
contrastively and the ViT self-supervised (DINO), both on synthetic scenes drawn with another seed than
the benchmark. The config value ``synthetic`` loads them through the ordinary local-file path.
"""

from __future__ import annotations

from pathlib import Path

import open_clip
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer

TINY_CLIP = "wilss-tiny-clip"
TINY_VIT = "wilss_tiny_vit"
WEIGHTS_DIR = Path(__file__).parent / "weights"
CLIP_WEIGHTS = WEIGHTS_DIR / "clip_tiny_synthetic.pt"
VIT_WEIGHTS = WEIGHTS_DIR / "vit_tiny_synthetic.pt"

if TINY_CLIP not in open_clip.list_models():
    open_clip.add_model_config(Path(__file__).parent / "model_configs" / f"{TINY_CLIP}.json")

# timm reads ``default_cfgs`` of the entrypoint's module when registering it: input size and the
# normalisation (ImageNet's, which pretrain_synthetic trains with too).
default_cfgs = generate_default_cfgs({
    TINY_VIT: {"input_size": (3, 64, 64), "num_classes": 0, "mean": IMAGENET_DEFAULT_MEAN,
               "std": IMAGENET_DEFAULT_STD, "crop_pct": 1.0},
})


@register_model
def wilss_tiny_vit(pretrained: bool = False, **kwargs) -> VisionTransformer:
    args = {"img_size": 64, "patch_size": 8, "embed_dim": 128, "depth": 4, "num_heads": 4, "num_classes": 0}
    return build_model_with_cfg(VisionTransformer, TINY_VIT, pretrained, **{**args, **kwargs})
