"""Self-attention of a ViT's last block at chosen query tokens, from its cached queries and keys."""

from __future__ import annotations

import torch


def attention_at(q: torch.Tensor, k: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Attention rows of the query tokens ``idx`` over all key tokens, per head.

    q, k: (B, heads, T, d) queries and keys (any float dtype; computed in fp32).
    idx: (B, S) token indices (into T) of the queries to take.
    Returns (B, S, heads, T): softmax_j(q_s . k_j / sqrt(d)), each row summing to 1.
    """
    b, h, _, d = q.shape
    qs = q.float().gather(2, idx[:, None, :, None].expand(b, h, idx.shape[1], d))  # (B, heads, S, d)
    logits = qs @ k.float().transpose(-2, -1) / d ** 0.5  # (B, heads, S, T)
    return logits.softmax(dim=-1).transpose(1, 2)
