"""MiB loss terms (Cermelli et al., "Modeling the Background for Incremental Learning in Semantic
Segmentation", CVPR 2020): unbiased cross-entropy and unbiased knowledge distillation.

At step t the background label of the current data may hide old classes, and the old model's
background may hide new ones; MiB folds the hidden classes into the background on either side.
Channels are in task order: 0 background, [1, n_old) old classes, [n_old, K) the step's new classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wilss.data.labels import IGNORE


def unbiased_ce(logits: torch.Tensor, target: torch.Tensor, n_old: int) -> torch.Tensor:
    """Unbiased CE: a background pixel may be any old class, so its log-probability is
    ``logsumexp(z_0, z_1..z_{n_old-1}) - logsumexp(z)``; new-class pixels use their own channel.

    logits: (B, K, H, W); target: (B, H, W) long with 0 = background, new classes >= n_old, 255
    ignored; labels in [1, n_old) are treated as background. Mean over the non-ignored pixels.
    At step 0 (``n_old == 1``) this is the plain cross-entropy.
    """
    den = torch.logsumexp(logits, dim=1, keepdim=True)  # (B, 1, H, W)
    bg = torch.logsumexp(logits[:, :n_old], dim=1, keepdim=True) - den  # (B, 1, H, W)
    new = logits[:, n_old:] - den  # (B, K - n_old, H, W)
    # Channels 1..n_old-1 are never a target (their labels are folded into 0): fill them with anything.
    logp = torch.cat([bg, logits[:, 1:n_old], new], dim=1)  # (B, K, H, W)
    target = torch.where((target > 0) & (target < n_old), torch.zeros_like(target), target)
    return F.nll_loss(logp, target, ignore_index=IGNORE)


def unbiased_kd(logits: torch.Tensor, old_logits: torch.Tensor) -> torch.Tensor:
    """Unbiased KD: the old model's background may be a new class, so the student's background
    probability is ``p_0 + Σ_{new} p_c``; old classes keep their own channel.

    logits: (B, K, H, W) student; old_logits: (B, n_old, H, W) the step t-1 model (bg + old).
    Returns ``-mean_pixels (1/n_old) Σ_{c<n_old} q'_c log p̂_c`` with q' = softmax(old_logits).
    """
    n_old = old_logits.shape[1]
    den = torch.logsumexp(logits, dim=1, keepdim=True)  # (B, 1, H, W)
    bg = torch.logsumexp(torch.cat([logits[:, :1], logits[:, n_old:]], dim=1), dim=1, keepdim=True) - den
    logp = torch.cat([bg, logits[:, 1:n_old] - den], dim=1)  # (B, n_old, H, W)
    q = torch.softmax(old_logits, dim=1)  # (B, n_old, H, W)
    return -(q * logp).sum(dim=1).div(n_old).mean()


@torch.no_grad()
def init_from_background(bg_weight: torch.Tensor, bg_bias: torch.Tensor, new_weight: torch.Tensor,
                         new_bias: torch.Tensor) -> None:
    """MiB's initialisation of a step's classifier, in place: every new class copies the background
    classifier's weight, and the background's probability mass is split evenly between itself and
    the ``n`` new classes: new biases and the background bias become ``b_bg - log(n + 1)``.

    bg_weight: (D, 1, 1) or (D,) the background row; bg_bias: () its bias (updated in place);
    new_weight: (n, D, 1, 1); new_bias: (n,).
    """
    n = new_weight.shape[0]
    shifted = bg_bias - torch.log(torch.tensor(n + 1.0, dtype=bg_bias.dtype, device=bg_bias.device))
    new_weight.copy_(bg_weight.reshape(1, *new_weight.shape[1:]).expand_as(new_weight))
    new_bias.fill_(float(shifted))
    bg_bias.copy_(shifted)
