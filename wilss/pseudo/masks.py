"""Score maps to masks and masks to labels (METHOD.md §5.1-§5.2): normalise, binarise, fuse, label map.

Pure tensor functions on per-class maps ``(..., h, w)``; nothing here samples or learns.
"""

from __future__ import annotations

import math

import torch

BINARIZE_MODES = ("mass", "fraction", "relative")
FUSIONS = ("union", "intersection", "none")
SCORE_NORMS = ("minmax", "softmax", "softmax_bg")


def binarize(scores: torch.Tensor, k: float = 0.7, mode: str = "mass") -> torch.Tensor:
    """Keep the top K of each map (METHOD.md §5.2, the dynamic "top K = 70%" threshold).

    scores: (..., h, w) float; each map over the last two dims is thresholded on its own.
    Returns a bool tensor of the same shape.

    Values are first made non-negative per map: a map whose minimum is negative is shifted by that
    minimum (x - min), a non-negative map is used as it is. Then, with x sorted descending:

    - "mass" (DINO convention, default): the threshold t is the value at which the cumulative sum
      first reaches k * sum(x); keep {x >= t}. The kept set holds >= k of the mass and is minimal:
      dropping its smallest value leaves < k (exactly so when no other location ties with t; ties
      at t are all kept, so the mask never depends on the order of equal values).
    - "fraction": keep the top max(1, ceil(k * h * w)) locations (ties at the last one kept).
    - "relative": keep {x >= k * max(x)}.

    Every map keeps at least its maximum, except a map of zero mass (all zero after the shift, e.g.
    a constant map that had negative values), which keeps nothing: it carries no evidence for any
    location, and claiming the whole map would be worse than claiming none.
    """
    if mode not in BINARIZE_MODES:
        raise ValueError(f"binarize mode {mode!r} is not one of {BINARIZE_MODES}")
    if not 0.0 <= k <= 1.0:
        raise ValueError(f"binarize k={k} is outside [0, 1]")
    # Double precision so "holds >= k of the mass" is exact up to fp64 rounding, not fp32.
    x = scores.flatten(-2).double()  # (..., n)
    x = x - x.amin(-1, keepdim=True).clamp(max=0)
    desc = x.sort(-1, descending=True).values  # (..., n)
    total = desc.sum(-1, keepdim=True)
    if mode == "mass":
        cum = desc.cumsum(-1)
        # Location j is needed while the mass before it is still short of k; this is a prefix
        # because the mass before j never decreases. The first location is always kept.
        needed = (cum - desc) < k * cum[..., -1:]
        needed[..., 0] = True
        thr = desc.gather(-1, needed.sum(-1, keepdim=True) - 1)
    elif mode == "fraction":
        n = desc.shape[-1]
        m = max(1, math.ceil(k * n - 1e-9))  # the 1e-9 stops fp noise (0.1 * 30) adding a location
        thr = desc[..., m - 1:m]
    else:
        thr = k * desc[..., :1]
    keep = (x >= thr) & (total > 0)
    return keep.view(scores.shape)


def fuse(init: torch.Tensor, seeds: torch.Tensor, how: str = "union") -> torch.Tensor:
    """Fuse the CLIP mask with the seed-attention mask (METHOD.md §5.2): M_fm = M_init ∪ M_seeds.

    init, seeds: bool masks of one shape, e.g. (B, C, h, w). ``how``: "union" (paper default),
    "intersection", or "none" (= init; seeds are not read).
    """
    if how == "union":
        return init | seeds
    if how == "intersection":
        return init & seeds
    if how == "none":
        return init.clone()
    raise ValueError(f"fusion {how!r} is not one of {FUSIONS}")


def normalize_scores(scores: torch.Tensor, valid: torch.Tensor, mode: str = "minmax",
                     logit_scale: float = 100.0, background: torch.Tensor | None = None) -> torch.Tensor:
    """Per-class CLIP score maps made comparable (METHOD.md §5.1 [recon]); invalid classes -> 0.

    scores: (B, C, h, w) raw cosine similarities F·T_c. valid: (B, C) bool, the classes of K(x).
    - "minmax" (default): (s - min) / (max - min) per map, in [0, 1]; a constant map becomes 0.
    - "softmax": softmax over the valid classes at each pixel of logit_scale * s (CLIP's scale);
      a pixel of an image with no valid class gets 0 everywhere.
    - "softmax_bg": the same softmax with one more competitor, ``background`` (B, 1, h, w), the raw
      cosine to a background prompt; its share is dropped, so the class maps sum to <= 1 per pixel.
    Returns (B, C, h, w) float, 0 on the channels of classes outside K(x).
    """
    vmask = valid[:, :, None, None]
    if mode == "minmax":
        lo = scores.amin((-2, -1), keepdim=True)
        hi = scores.amax((-2, -1), keepdim=True)
        out = (scores - lo) / (hi - lo).clamp_min(1e-12)
    elif mode in ("softmax", "softmax_bg"):
        logits = (logit_scale * scores).masked_fill(~vmask, float("-inf"))  # (B, C, h, w)
        if mode == "softmax_bg":
            if background is None or background.shape != (scores.shape[0], 1, *scores.shape[2:]):
                raise ValueError(f"score normalisation 'softmax_bg' needs background scores of shape "
                                 f"{(scores.shape[0], 1, *scores.shape[2:])}, got "
                                 f"{None if background is None else tuple(background.shape)}")
            logits = torch.cat([logits, logit_scale * background], 1)  # (B, C + 1, h, w)
        # all -inf (no valid class, no background) gives NaN -> 0; the background's share is dropped
        out = logits.softmax(1)[:, :scores.shape[1]].nan_to_num(0.0)
    else:
        raise ValueError(f"score normalisation {mode!r} is not one of {SCORE_NORMS}")
    return out * vmask


def label_map(fused: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """One label map per image from per-class masks (METHOD.md §5.2 [recon]).

    fused: (B, C, h, w) bool masks; scores: (B, C, h, w) the M_init scores; valid: (B, C) bool.
    Returns (B, h, w) long in {0..C}: 0 (background) where no valid class's mask covers the pixel,
    else 1 + the covering valid class with the highest score (first such class on exact ties).
    """
    covered = fused & valid[:, :, None, None]  # (B, C, h, w)
    best = scores.float().masked_fill(~covered, float("-inf")).argmax(1)  # (B, h, w)
    return torch.where(covered.any(1), best + 1, torch.zeros_like(best))
