"""Pretrain the ``resnet-tiny`` backbone: the offline stand-in for ImageNet weights.

Real runs start the student from an ImageNet-pretrained ResNet-101: pretrained on other images with
image-level labels only. The synthetic default mirrors that: the tiny backbone is pretrained by
multi-label image classification on synthetic scenes drawn with a *different* seed from the benchmark
(so no benchmark image and no pixel label is seen), then shipped inside the package
(``wilss/models/weights/resnet_tiny_synthetic.pt``, fp16, ~3.5 MB) and loaded through the same
``model.pretrained=<file>`` path as real weights.

    python -m wilss.models.pretrain_tiny            # ~10 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wilss.data import synthetic
from wilss.data.transforms import MEAN, STD
from wilss.models.student import TINY_WEIGHTS
from wilss.models.tiny import TinyResNet

PRETRAIN_SEED = 1_000_003  # far from the benchmark's seeds: other scenes, same visual world


def make_scenes(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 3, size, size) normalised images and (n, 15) multi-hot labels (classes with >= 8 pixels)."""
    images, labels = [], []
    n_fg = len(synthetic.CLASSES) - 1
    for i in range(n):
        image, mask = synthetic.render_scene(np.random.default_rng([seed, i]), size)
        counts = np.bincount(mask.ravel(), minlength=256)[1 : n_fg + 1]
        images.append(torch.from_numpy(image).permute(2, 0, 1))
        labels.append(torch.from_numpy(counts >= 8))
    x = torch.stack(images).float() / 255
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    return x, torch.stack(labels).float()


def pretrain(n_images: int = 6000, epochs: int = 40, batch_size: int = 64, lr: float = 3e-3,
             size: int = 64, seed: int = PRETRAIN_SEED, log=print) -> TinyResNet:
    torch.manual_seed(0)
    x, y = make_scenes(n_images, size, seed)
    backbone = TinyResNet(output_stride=8)
    head = nn.Linear(backbone.out_channels, y.shape[1])
    params = [*backbone.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    steps = epochs * (n_images // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    for epoch in range(epochs):
        start, perm, total = time.perf_counter(), torch.randperm(n_images), 0.0
        backbone.train()
        for i in range(n_images // batch_size):
            idx = perm[i * batch_size : (i + 1) * batch_size]
            xb = x[idx]
            if torch.rand(()) < 0.5:
                xb = xb.flip(-1)
            logits = head(backbone(xb)["out"].mean((2, 3)))  # (B, 15)
            loss = F.binary_cross_entropy_with_logits(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        log(f"pretrain epoch {epoch + 1}/{epochs}  bce {total / (n_images // batch_size):.4f}  "
            f"{time.perf_counter() - start:.1f}s")
    return backbone


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(TINY_WEIGHTS))
    p.add_argument("--images", type=int, default=6000)
    p.add_argument("--epochs", type=int, default=40)
    args = p.parse_args()
    backbone = pretrain(args.images, args.epochs)
    state = {k: v.half() if v.is_floating_point() else v for k, v in backbone.state_dict().items()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
