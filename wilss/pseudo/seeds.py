"""Seed points and seed-guided attention maps (METHOD.md §5.2): the category-agnostic M_seeds evidence.

Seeds are re-sampled at every training step from cached evidence, so sampling takes an explicit
``torch.Generator`` and the attention is one small matmul over the ViT's cached queries and keys.
"""

from __future__ import annotations

import torch

from wilss.pseudo.attention import attention_at


def sample_seeds(masks: torch.Tensor, n: int, generator: torch.Generator,
                 scores: torch.Tensor | None = None) -> torch.Tensor:
    """N random seed points per class mask (METHOD.md §5.2: "sample N random seed points").

    masks: (B, C, h, w) bool foregrounds. scores: optional (B, C, h, w), used only for empty masks.
    generator: a torch.Generator, on any device (the draws run there; reproducible with it).
    Returns (B, C, n) long flat token indices into h*w.

    Points are uniform over the foreground, without replacement when it has at least n points and
    with replacement otherwise. An empty mask falls back to the argmax of its ``scores`` map (all n
    seeds on that point) or, without scores, to the whole map.
    """
    b, c, h, w = masks.shape
    weights = masks.reshape(b * c, h * w).float()  # (B*C, T)
    empty = weights.sum(1) == 0
    if empty.any():
        if scores is None:
            fallback = torch.ones_like(weights)
        else:
            best = scores.reshape(b * c, h * w).argmax(1, keepdim=True)
            fallback = torch.zeros_like(weights).scatter_(1, best, 1.0)
        weights = torch.where(empty[:, None], fallback, weights)
    enough = (weights > 0).sum(1) >= n
    dev = generator.device if generator is not None else weights.device
    weights, enough = weights.to(dev), enough.to(dev)
    out = torch.empty(b * c, n, dtype=torch.long, device=dev)
    for rows, replacement in ((enough, False), (~enough, True)):
        if rows.any():
            out[rows] = torch.multinomial(weights[rows], n, replacement=replacement, generator=generator)
    return out.view(b, c, n).to(masks.device)


def seed_attention(q: torch.Tensor, k: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """Last-block attention averaged over heads and seeds (METHOD.md §5.2).

    A^c = 1/N Σ_s 1/n_h Σ_h softmax_j(q_s^h · k_j^h / sqrt(d)).
    q, k: (B, heads, T, d) cached last-block queries and keys of the patch tokens.
    seeds: (B, C, N) token indices into T. Returns (B, C, T) float32; each row sums to 1.
    """
    b, c, n = seeds.shape
    att = attention_at(q, k, seeds.reshape(b, c * n))  # (B, C*N, heads, T)
    return att.mean(2).view(b, c, n, -1).mean(2)
