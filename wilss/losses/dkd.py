"""DKD loss terms (Baek et al., NeurIPS 2022; METHOD.md §3.2): L_mbce, L_kd, L_dkd+ / L_dkd-, L_ac.

Every term is BCE-with-logits reduced the DKD way (§7.6): a mean over (N, H, W) **per class**, then a
**sum over classes**, so the loss grows with the number of classes. ``decompose`` splits the bias-free
logits of a 1x1 classifier into positive and negative reasoning (the weights' positive and negative
parts applied to the non-negative features).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wilss.data.labels import IGNORE


def class_sum(bce: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) per-pixel losses -> scalar: mean over (B, H, W) per class, summed over classes."""
    return bce.mean(dim=(0, 2, 3)).sum()


def decompose(weight: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive and negative reasoning of a 1x1 classifier, without its bias (§3.2 item 3).

    weight: (C, D) or a conv weight (C, D, 1, 1); features: (B, D, h, w).
    Returns (positive, negative), each (B, C, h, w): ``positive = Σ_d max(w_cd, 0) f_d`` and
    ``negative = Σ_d min(w_cd, 0) f_d``, so ``positive + negative`` is the bias-free logit.
    """
    w = weight.reshape(weight.shape[0], -1)  # (C, D)
    if w.shape[1] != features.shape[1]:
        raise ValueError(f"weight has {w.shape[1]} inputs, features {features.shape[1]} channels")
    positive = torch.einsum("cd,bdhw->bchw", w.clamp(min=0), features)
    negative = torch.einsum("cd,bdhw->bchw", w.clamp(max=0), features)
    return positive, negative


def mbce(logits: torch.Tensor, target: torch.Tensor, first_channel: int, pos_weight: float,
         ignore_void: bool = False) -> torch.Tensor:
    """L_mbce (§3.2 item 1): BCE of the new classes against their one-hot pixel labels.

    logits: (B, C_t, H, W), the new-class channels only; ``first_channel`` is the label value of the
    first of them (labels ``first_channel + k`` are positives of channel k). target: (B, H, W) long.
    Every other pixel is a negative for every new class, background, old classes and void (255)
    included, unless ``ignore_void``: then void pixels are left out of the per-class means.
    ``pos_weight`` scales the positive term (VOC: 2 at step 0, 1 later; ADE: 35).
    """
    logits = logits.float()
    channels = torch.arange(first_channel, first_channel + logits.shape[1], device=target.device)
    y = (target[:, None] == channels[None, :, None, None]).float()  # (B, C_t, H, W)
    pw = torch.tensor(pos_weight, device=logits.device)
    bce = F.binary_cross_entropy_with_logits(logits, y, pos_weight=pw, reduction="none")  # (B, C_t, H, W)
    if not ignore_void:
        return class_sum(bce)
    valid = (target != IGNORE)[:, None].to(bce.dtype)  # (B, 1, H, W)
    return (bce * valid).sum(dim=(0, 2, 3)).div(valid.sum().clamp(min=1)).sum()


def kd(logits: torch.Tensor, old_logits: torch.Tensor) -> torch.Tensor:
    """L_kd (§3.2 item 2): BCE(z_c, σ(z'_c)) over the old classes (aux channel excluded).

    logits: (B, C_old, H, W) the student's old-class channels; old_logits: (B, C_old, H, W) the step
    t-1 model's, at the same (full) resolution.
    """
    return class_sum(F.binary_cross_entropy_with_logits(logits, torch.sigmoid(old_logits), reduction="none"))


def dkd(reasoning: torch.Tensor, old_reasoning: torch.Tensor) -> torch.Tensor:
    """L_dkd+ or L_dkd- (§3.2 item 3): BCE(z±_c, σ(z'±_c)) at feature resolution, no bias.

    reasoning: (B, C_old, h, w) the student's positive (or negative) reasoning of the old classes;
    old_reasoning: the step t-1 model's, from its own weights and features.
    """
    return kd(reasoning, old_reasoning)


def aux(aux_logits: torch.Tensor) -> torch.Tensor:
    """L_ac (§3.2 item 4): the auxiliary classifier's BCE with every pixel a negative.

    aux_logits: (B, 1, H, W), computed on detached features.
    """
    return class_sum(F.binary_cross_entropy_with_logits(aux_logits, torch.zeros_like(aux_logits),
                                                        reduction="none"))


def predict(logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """DKD inference (§3.1): (B, 1 + K, H, W) logits [aux, c1..cK] -> (B, H, W) labels.

    ``pred = 1 + argmax_{k>=1} σ(z_k)``, and background (0) where ``max_{k>=1} σ(z_k) <= threshold``.
    """
    p = torch.sigmoid(logits[:, 1:])  # (B, K, H, W)
    best, idx = p.max(dim=1)
    return torch.where(best > threshold, idx + 1, torch.zeros_like(idx))


def pos_weight(cfg, step: int) -> float:
    """The step's BCE pos_weight (§7.10): ``cfg.pos_weight_step0`` at step 0, ``cfg.pos_weight`` later."""
    return cfg.pos_weight_step0 if step == 0 else cfg.pos_weight


def total(terms: dict[str, torch.Tensor], cfg) -> torch.Tensor:
    """Weighted sum of the terms present (§3.2 Totals): step 0 has mbce and ac, later steps all five.

    cfg: a ``DKDConfig`` (weights ``w_mbce``, ``w_kd``, ``w_dkd_pos``, ``w_dkd_neg``, ``w_ac``).
    """
    weights = {"mbce": cfg.w_mbce, "kd": cfg.w_kd, "dkd_pos": cfg.w_dkd_pos, "dkd_neg": cfg.w_dkd_neg,
               "ac": cfg.w_ac}
    return sum(weights[k] * v for k, v in terms.items())
