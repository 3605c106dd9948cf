"""The online FMWISS pseudo-mask pipeline (METHOD.md §5.1-§5.2, §5.7), from cached evidence.

Cached per image: dense CLIP features and the self-supervised ViT's last-block queries and keys.
Per step: M_init = F·T^T, binarise, sample seeds, seed attention, binarise, fuse, one label map.
Only the seeds are random, so N, top-K and fusion can change per trial at almost no cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from wilss.pseudo.masks import binarize, fuse, label_map, normalize_scores
from wilss.pseudo.seeds import sample_seeds, seed_attention

if TYPE_CHECKING:
    from wilss.config import PseudoConfig


@dataclass(frozen=True)
class PseudoMasks:
    """One batch of pseudo masks on the ViT grid (h, w); every mask is False on invalid classes."""

    scores: torch.Tensor  # (B, C, h, w) float, normalised M_init; 0 on invalid classes
    init: torch.Tensor  # (B, C, h, w) bool, binarised M_init
    seeds: torch.Tensor | None  # (B, C, h, w) bool, binarised seed attention; None when fusion "none"
    fused: torch.Tensor  # (B, C, h, w) bool, M_fm = fuse(init, seeds)
    labels: torch.Tensor  # (B, h, w) long in {0..C}: 0 background, else 1 + class index


def pseudo_masks(clip_feats: torch.Tensor, text_emb: torch.Tensor, q: torch.Tensor | None,
                 k: torch.Tensor | None, valid: torch.Tensor, cfg: PseudoConfig,
                 generator: torch.Generator | None, score_norm: str = "minmax", logit_scale: float = 100.0,
                 vit_grid: tuple[int, int] | None = None, background_emb: torch.Tensor | None = None) -> PseudoMasks:
    """Fused pseudo masks for the step's new classes (METHOD.md §5.1-§5.2).

    clip_feats: (B, d, hc, wc) L2-normalised dense CLIP features F.
    text_emb: (C, d) L2-normalised text embeddings T_c of the step's new classes.
    q, k: (B, heads, T, dh) cached last-block queries / keys of the ViT's patch tokens (no CLS),
        T = hv * wv; vit_grid = (hv, wv), default square (the CLIP grid when q is None). Not read
        (may be None) when cfg.fusion == "none", which skips seeds and attention entirely.
    valid: (B, C) bool, the image labels K(x); all outputs are restricted to these classes.
    cfg: n_seeds, topk, topk_mode, fusion. generator: draws the seeds (any device; see sample_seeds).
    background_emb: (d,) L2-normalised text embedding of the background prompt; needed by
        score_norm "softmax_bg" only.

    M_init = F·T^T is resized (bilinear) to the ViT grid when the grids differ, then normalised
    (``score_norm``, see normalize_scores), so every output lies on the ViT grid. Attention is
    computed only for each image's valid classes (padded to the largest |K(x)| in the batch).
    """
    text = text_emb.float() if background_emb is None else torch.cat([text_emb, background_emb[None]]).float()
    raw = torch.einsum("bdhw,cd->bchw", clip_feats.float(), text)  # (B, C [+ 1 background], hc, wc)
    hv, wv = vit_grid or (_square_grid(q) if q is not None else tuple(raw.shape[-2:]))
    if raw.shape[-2:] != (hv, wv):
        raw = F.interpolate(raw, size=(hv, wv), mode="bilinear", align_corners=False)
    if background_emb is not None:
        raw, background = raw[:, :-1], raw[:, -1:]
    else:
        background = None
    scores = normalize_scores(raw, valid, score_norm, logit_scale, background)  # (B, C, hv, wv)
    vmask = valid[:, :, None, None]
    init = binarize(scores, cfg.topk, cfg.topk_mode) & vmask
    if cfg.fusion == "none":
        return PseudoMasks(scores, init, None, init, label_map(init, scores, valid))
    if q is None or k is None or q.shape[2] != hv * wv:
        raise ValueError(f"fusion {cfg.fusion!r} needs ViT queries/keys with T = {hv}*{wv} tokens")
    seeds = _seed_masks(scores, init, q, k, valid, cfg, generator)
    fused = fuse(init, seeds, cfg.fusion)
    return PseudoMasks(scores, init, seeds, fused, label_map(fused, scores, valid))


def _seed_masks(scores: torch.Tensor, init: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                valid: torch.Tensor, cfg: PseudoConfig, generator: torch.Generator | None) -> torch.Tensor:
    """M_seeds (B, C, hv, wv) bool: sample seeds in init, average their attention, binarise."""
    b, _, hv, wv = scores.shape
    seeds = torch.zeros_like(init)
    n_slots = int(valid.sum(1).max())
    if n_slots == 0:
        return seeds
    # Slots = each image's valid classes first; the padding slots hold invalid classes, masked below.
    slots = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)[:, :n_slots]  # (B, S)
    at = slots[:, :, None, None].expand(b, n_slots, hv, wv)
    idx = sample_seeds(init.gather(1, at), cfg.n_seeds, generator, scores.gather(1, at))  # (B, S, N)
    att = seed_attention(q, k, idx).view(b, n_slots, hv, wv)
    kept = binarize(att, cfg.topk, cfg.topk_mode) & valid.gather(1, slots)[:, :, None, None]
    return seeds.scatter(1, at, kept)


def _square_grid(q: torch.Tensor) -> tuple[int, int]:
    side = math.isqrt(q.shape[2])
    if side * side != q.shape[2]:
        raise ValueError(f"{q.shape[2]} ViT tokens are not a square grid: pass vit_grid=(h, w)")
    return side, side
