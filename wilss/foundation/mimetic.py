"""Mimetic initialisation of self-attention (Trockman & Kolter, ICML 2023), for ViTs trained on little data.

Trained ViTs have ``W_q W_k^T`` close to a positive multiple of the identity plus noise and ``W_v W_o``
close to a negative one; initialising each head that way (an SVD split of ``a1 Z + b1 I`` and of
``a2 Z - b2 I``, Z ~ N(0, 1/d)) makes tokens attend to similar tokens from step 0, which is what lets the
tiny synthetic models train in minutes on a CPU instead of hours.
"""

from __future__ import annotations

import torch
from torch import nn


def mimetic_weights(d: int, heads: int, gen: torch.Generator, a1: float = 0.7, b1: float = 0.7, a2: float = 0.4,
                    b2: float = 0.4) -> tuple[torch.Tensor, torch.Tensor]:
    """(3d, d) packed q, k, v projection and (d, d) output projection, in nn.Linear layout (y = x W^T)."""
    dh = d // heads
    wq, wk = [], []
    for _ in range(heads):
        u, s, vh = torch.linalg.svd(a1 * torch.randn(d, d, generator=gen) / d ** 0.5 + b1 * torch.eye(d))
        wq.append(u[:, :dh] * s[:dh].sqrt())  # (d, dh): x -> q_h
        wk.append(vh[:dh].T * s[:dh].sqrt())  # q_h . k_h = x (a1 Z + b1 I)_rank-dh x'
    u, s, vh = torch.linalg.svd(a2 * torch.randn(d, d, generator=gen) / d ** 0.5 - b2 * torch.eye(d))
    wv, wo = u * s.sqrt(), s.sqrt()[:, None] * vh  # wv @ wo = a2 Z - b2 I
    qkv = torch.cat([torch.cat(wq, 1).T, torch.cat(wk, 1).T, wv.T])  # (3d, d)
    return qkv, wo.T


@torch.no_grad()
def mimetic_init_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Re-initialise every timm ``Attention`` (``qkv``, ``proj``) and ``nn.MultiheadAttention`` in ``model``."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
            qkv, wo = mimetic_weights(module.embed_dim, module.num_heads, gen)
            module.in_proj_weight.copy_(qkv)
            module.out_proj.weight.copy_(wo)
            if module.in_proj_bias is not None:
                module.in_proj_bias.zero_()
        elif hasattr(module, "qkv") and hasattr(module, "proj") and hasattr(module, "num_heads"):
            qkv, wo = mimetic_weights(module.qkv.in_features, module.num_heads, gen)
            module.qkv.weight.copy_(qkv)
            module.proj.weight.copy_(wo)
            if module.qkv.bias is not None:
                module.qkv.bias.zero_()
    return model
