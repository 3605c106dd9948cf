"""WILSON loss terms (Cermelli et al., CVPR 2022; METHOD.md §4.2, §4.3).

Step 0: pixel BCE over one-hot labels. Step t > 0 (image labels only), with the localizer's logits
z (B, K, h, w) on the current encoder features, m = softmax(z), and ω = σ(step t-1 logits) (B, n_old,
h, w), all at the feature stride:
- ℓ_CLS: nGWP pooling + focal penalty of z, BCE against the new classes' image labels;
- ℓ_LOC: BCE(z_old, ω) over background and old classes;
- ℓ_ENC: MSE between the current and the previous encoder features;
- ℓ_SSS: class-balanced CE of z against PAMR-refined pseudo-GT (``pseudo_gt``);
- ℓ_SEG: BCE of the student against soft targets q̂ (``student_targets``), weighted per image.
Channels are in task order: 0 background, [1, n_old) old classes, [n_old, K) the step's new classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wilss.data.labels import IGNORE


def pixel_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Step-0 loss (§4.2): Σ_c BCE(z_c, 1[label = c]) per pixel, averaged over all pixels (void
    pixels, label 255, contribute 0). logits (B, K, H, W); target (B, H, W) long."""
    k = logits.shape[1]
    valid = target != IGNORE  # (B, H, W)
    onehot = F.one_hot(torch.where(valid, target, 0), k).permute(0, 3, 1, 2).to(logits.dtype)  # (B, K, H, W)
    bce = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none").sum(dim=1)  # (B, H, W)
    return (bce * valid).mean()


def ngwp_scores(z: torch.Tensor, gamma: float = 3.0, lam: float = 0.01) -> torch.Tensor:
    """Image-level class scores (B, K) from localizer logits z (B, K, h, w): normalised global
    weighted pooling ``Σ_i m_i z_i / (1 + Σ_i m_i)`` plus the focal penalty
    ``(1 - mean_i m_i)^γ log(λ + mean_i m_i)``, with m = softmax over classes."""
    z = z.flatten(2)  # (B, K, hw)
    m = torch.softmax(z, dim=1)
    pooled = (m * z).sum(-1) / (1 + m.sum(-1))  # (B, K)
    mean = m.mean(-1)
    return pooled + (1 - mean).pow(gamma) * torch.log(lam + mean)


def classification(z: torch.Tensor, labels: torch.Tensor, n_old: int) -> torch.Tensor:
    """ℓ_CLS: BCE of the nGWP scores of the new classes against their image labels.

    z: (B, K, h, w); labels: (B, K) with the new-class entries [n_old:) filled. Mean over (B, new)."""
    scores = ngwp_scores(z)[:, n_old:]  # (B, K - n_old)
    return F.binary_cross_entropy_with_logits(scores, labels[:, n_old:].to(scores.dtype))


def localization_prior(z: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
    """ℓ_LOC: BCE(z_c, ω_c) over background and old classes, averaged over (B, n_old, h, w).

    z: (B, K, h, w) localizer logits; omega: (B, n_old, h, w) = σ(step t-1 logits)."""
    return F.binary_cross_entropy_with_logits(z[:, : omega.shape[1]], omega)


def encoder_distillation(features: torch.Tensor, old_features: torch.Tensor) -> torch.Tensor:
    """ℓ_ENC: mean squared difference of the encoder features (B, C, h, w) of both models."""
    return F.mse_loss(features, old_features)


def pseudo_gt(masks: torch.Tensor, kappa_bg: float = 0.7, kappa_fg: float = 0.6,
              floor: float = 0.2) -> torch.Tensor:
    """Binary pseudo-GT (B, K, h, w) from (PAMR-refined) class maps (B, K, h, w): class c is on where
    its map exceeds ``max(κ_c · max_i map_c, floor)`` (κ = 0.7 for bg, 0.6 otherwise); pixels claimed
    by more than one class are dropped."""
    peak = masks.flatten(2).max(-1).values  # (B, K)
    kappa = torch.full_like(peak, kappa_fg)
    kappa[:, 0] = kappa_bg
    thr = (peak * kappa).clamp(min=floor)[..., None, None]  # (B, K, 1, 1)
    on = masks > thr
    return (on & (on.sum(1, keepdim=True) == 1)).to(masks.dtype)


def self_supervised(z: torch.Tensor, gt: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """ℓ_SSS: class-balanced CE of the localizer against the pseudo-GT.

    z: (B, K, h, w) logits; gt: (B, K, h, w) binary pseudo-GT; labels: (B, K) image labels (new
    classes). Pixel weight of class c: ``(|I| - M_c) / (1 + |I|)`` with M_c its pseudo pixels and |I|
    all pseudo pixels of the image; pixels without a class contribute 0. An image counts only if its
    pseudo-GT holds exactly (#image labels + 1) classes. Mean over images of the per-image pixel mean.
    """
    b = z.shape[0]
    target = gt.argmax(1).masked_fill(gt.sum(1) < 1, IGNORE)  # (B, h, w)
    counts = gt.flatten(2).sum(-1)  # (B, K)
    total = counts.sum(-1, keepdim=True)  # (B, 1)
    class_w = (total - counts) / (1 + total)  # (B, K)
    pixel_w = (gt * class_w[..., None, None]).sum(1)  # (B, h, w)
    ce = F.cross_entropy(z, target, ignore_index=IGNORE, reduction="none")  # (B, h, w), 0 where ignored
    keep = (labels.sum(-1) + 1 == (counts > 0).sum(-1)).to(ce.dtype)  # (B,)
    return (keep * (pixel_w * ce).reshape(b, -1).mean(-1)).mean()


def hard(m: torch.Tensor) -> torch.Tensor:
    """One-hot of the per-pixel maximum over classes (B, K, h, w); ties give several ones."""
    return (m >= m.max(dim=1, keepdim=True).values).to(m.dtype)


def student_targets(m: torch.Tensor, omega: torch.Tensor, alpha: float) -> torch.Tensor:
    """Soft targets q̂ (B, K, h, w) of the student (§4.3 item 5), from the localizer's class maps m
    (B, K, h, w; absent classes already zeroed) and ω (B, n_old, h, w):
    q = α·hard(m) + (1-α)·m; background min(ω_bg, q_bg); old classes ω; new classes q."""
    q = alpha * hard(m) + (1 - alpha) * m
    n_old = omega.shape[1]
    bg = torch.minimum(omega[:, :1], q[:, :1])
    return torch.cat([bg, omega[:, 1:], q[:, n_old:]], dim=1)


def image_weights(q: torch.Tensor, labels: torch.Tensor, n_old: int) -> torch.Tensor:
    """(B,) 1 for images where, for every new class, "q has mass for c" equals "c is labelled"."""
    has = q[:, n_old:].flatten(2).sum(-1) > 0  # (B, K - n_old)
    return (has == labels[:, n_old:].bool()).all(dim=1).to(q.dtype)


def segmentation(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """ℓ_SEG: Σ_c BCE(p_c, q̂_c) averaged over pixels per image, then ``Σ w_n ℓ_n / (Σ w_n + 1e-5)``.

    logits, target: (B, K, h, w); weights: (B,)."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")  # (B, K, h, w)
    per_image = bce.sum(1).flatten(1).mean(-1)  # (B,)
    return (weights * per_image).sum() / (weights.sum() + 1e-5)
