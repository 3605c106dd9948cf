"""Sanity metrics for foundation evidence on synthetic val scenes (is it better than chance?).

- ``clip_miou``: for every class present in an image, M_init = cos(dense CLIP features, class text),
  upsampled to the image, min-max normalised over the image, binarised at 0.5, against the class mask;
- ``attention_miou``: for every object class, the ViT's last-block attention (mean over heads) at one
  random foreground pixel of that class, upsampled, binarised by keeping 70% of its mass (DINO's rule,
  ``pseudo.topk_mode=mass``), against the class mask;
- ``all_ones_miou``: the same IoU for a mask covering the whole image (the area-only baseline).

IoUs are accumulated per class over the images (void pixels ignored), then averaged over classes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from wilss.data import synthetic
from wilss.foundation.clip import ClipScorer
from wilss.foundation.vit import VitEvidence
from wilss.pseudo.attention import attention_at


def val_scenes(n: int, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """The first ``n`` val scenes of the synthetic benchmark with ``seed``: (n, 3, S, S) in [0, 1], (n, S, S)."""
    pairs = [synthetic.render_scene(np.random.default_rng([seed, synthetic.SPLITS["val"][0], i]), size)
             for i in range(n)]
    images = torch.from_numpy(np.stack([p[0] for p in pairs])).permute(0, 3, 1, 2).float() / 255
    return images, np.stack([p[1] for p in pairs])


def _present(mask: np.ndarray) -> list[int]:
    return [int(c) for c in np.unique(mask) if 0 < c < synthetic.VOID]


class _IoU:
    def __init__(self) -> None:
        self.inter: dict[int, float] = {}
        self.union: dict[int, float] = {}

    def add(self, c: int, pred: np.ndarray, mask: np.ndarray) -> None:
        valid, gt = mask != synthetic.VOID, mask == c
        self.inter[c] = self.inter.get(c, 0.0) + float((pred & gt & valid).sum())
        self.union[c] = self.union.get(c, 0.0) + float(((pred | gt) & valid).sum())

    def miou(self) -> float:
        return float(np.mean([self.inter[c] / self.union[c] for c in self.union if self.union[c] > 0]))


def keep_mass(maps: torch.Tensor, share: float) -> torch.Tensor:
    """(..., N) non-negative maps -> bool: the smallest set of locations holding ``share`` of each map's mass."""
    values, order = maps.sort(dim=-1, descending=True)
    cum = values.cumsum(-1) / values.sum(-1, keepdim=True).clamp_min(1e-12)
    keep_sorted = (cum - values / values.sum(-1, keepdim=True).clamp_min(1e-12)) < share  # include the crossing one
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


def clip_miou(scorer: ClipScorer, images: torch.Tensor, masks: np.ndarray, class_names: tuple[str, ...]) -> float:
    size = images.shape[-1]
    text = scorer.text_embeddings(list(class_names))  # (n_classes, d)
    feats = scorer.dense_features(images)  # (B, d, h, w)
    scores = torch.einsum("bdhw,cd->bchw", feats, text)
    scores = F.interpolate(scores, size=(size, size), mode="bilinear", align_corners=False).cpu()
    iou = _IoU()
    for b, mask in enumerate(masks):
        for c in _present(mask):
            s = scores[b, c]
            s = (s - s.min()) / (s.max() - s.min()).clamp_min(1e-12)
            iou.add(c, (s >= 0.5).numpy(), mask)
    return iou.miou()


def attention_miou(vit: VitEvidence, images: torch.Tensor, masks: np.ndarray, share: float = 0.7,
                   seed: int = 0) -> float:
    size = images.shape[-1]
    q, k, (h, w) = vit.qk(images)  # (B, heads, T, dh)
    rng = np.random.default_rng(seed)
    iou = _IoU()
    for b, mask in enumerate(masks):
        for c in _present(mask):
            ys, xs = np.nonzero(mask == c)
            i = rng.integers(len(ys))
            token = (ys[i] * h // size) * w + xs[i] * w // size
            att = attention_at(q[b:b + 1], k[b:b + 1], torch.tensor([[token]]))  # (1, 1, heads, T)
            att = att.mean(2).reshape(1, 1, h, w)
            att = F.interpolate(att, size=(size, size), mode="bilinear", align_corners=False).flatten()
            iou.add(c, keep_mass(att, share).reshape(size, size).cpu().numpy(), mask)
    return iou.miou()


def all_ones_miou(masks: np.ndarray) -> float:
    iou = _IoU()
    for mask in masks:
        for c in _present(mask):
            iou.add(c, np.ones(mask.shape, bool), mask)
    return iou.miou()
