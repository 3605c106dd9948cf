"""Joint image/mask transforms on ``torchvision.transforms.v2`` (METHOD.md §1.6).

Images travel as ``tv_tensors.Image`` and masks as ``tv_tensors.Mask``, so every geometric op is
applied to both and masks are always resized with nearest interpolation.
"""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics, as every reference codebase
STD = (0.229, 0.224, 0.225)


def _to_float() -> list:
    return [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
            v2.Normalize(MEAN, STD)]


def train_transform(crop_size: int, scale: tuple[float, float] = (0.5, 2.0)) -> v2.Compose:
    """RandomResizedCrop (area scale may exceed 1: then a centre crop), horizontal flip, normalise."""
    return v2.Compose([
        v2.RandomResizedCrop(crop_size, scale=scale, ratio=(3 / 4, 4 / 3), antialias=True),
        v2.RandomHorizontalFlip(),
        *_to_float(),
    ])


def eval_transform(mode: str, size: int) -> v2.Compose:
    """"crop": shorter side -> size, centre crop size x size (the published tables); "full": as is."""
    geometry = [v2.Resize(size, antialias=True), v2.CenterCrop(size)] if mode == "crop" else []
    return v2.Compose([*geometry, *_to_float()])
