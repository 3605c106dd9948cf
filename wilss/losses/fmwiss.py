"""FMWISS loss terms (METHOD.md §5.3-§5.5): teacher BCE, dense contrastive, old-class copy-paste BCE,
the student's soft targets and BCE, and the total L = L_seg + L_bce^T + λ·L_dcl + L_old^T.

Each term is a small pure function returning a scalar tensor; the method assembles them by name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F


def teacher_bce(logits: torch.Tensor, targets: torch.Tensor, channels: Sequence[int],
                valid: torch.Tensor | None = None, pos_weight: Sequence[float] | None = None) -> torch.Tensor:
    """L_bce^T (METHOD.md §5.3): the teacher's pixel BCE against the fused pseudo masks.

    logits: (B, C, H, W) teacher logits; targets: (B, C', H, W) in [0, 1] for ``channels``
    (C' = len(channels), e.g. background and the new classes). valid: optional (B, H, W) bool mask
    or float pixel weights. pos_weight: optional (C',) weights of the positive term per channel
    (``fmwiss.teacher_pos_weight`` on the new classes; None = 1, the paper's plain BCE). Returns
    BCE-with-logits averaged over the channels and the (weighted) pixels; 0 (with a graph) when no
    pixel has weight.
    """
    if targets.shape[1] != len(channels):
        raise ValueError(f"targets have {targets.shape[1]} channels for {len(channels)} logit channels")
    if pos_weight is not None:
        if len(pos_weight) != len(channels):
            raise ValueError(f"pos_weight has {len(pos_weight)} entries for {len(channels)} channels")
        pos_weight = torch.tensor(list(pos_weight), dtype=logits.dtype, device=logits.device)[:, None, None]
    bce = F.binary_cross_entropy_with_logits(logits[:, list(channels)], targets.to(logits.dtype),
                                             reduction="none", pos_weight=pos_weight)  # (B, C', H, W)
    return _pixel_mean(bce, valid)


def old_class_bce(logits: torch.Tensor, pasted: torch.Tensor, old_channels: Sequence[int],
                  region: torch.Tensor | None = None) -> torch.Tensor:
    """L_old^T (METHOD.md §5.4): BCE(σ(teacher old-class logits), labels of the pasted instances).

    logits: (B, C, H, W) teacher logits; pasted: (B, H, W) long, the pasted instance's class
    channel, 0 where nothing was pasted; target of old channel c = [pasted == c]. region: (B,) bool,
    the images that received a paste (None = all). Averaged over old channels and the pixels of
    those images; 0 (with a graph) when no image is in the region.
    """
    old = torch.as_tensor(list(old_channels), device=pasted.device)
    targets = (pasted[:, None] == old[:, None, None]).to(logits.dtype)  # (B, n_old, H, W)
    bce = F.binary_cross_entropy_with_logits(logits[:, list(old_channels)], targets, reduction="none")
    weight = None if region is None else region[:, None, None].expand_as(pasted)
    return _pixel_mean(bce, weight)


def sample_points(embeddings: torch.Tensor, labels: torch.Tensor, points_per_class: int,
                  generator: torch.Generator | None, ignore: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """The points L_dcl runs on (METHOD.md §5.3: "ten points per class present in the mini-batch").

    embeddings: (B, D, h, w) pixel embeddings; labels: (B, h, w) long pseudo labels on the same grid.
    For every class present in the batch (``ignore`` excluded), up to ``points_per_class`` pixels
    are drawn uniformly without replacement from the whole batch. generator: on any device (the
    random keys are drawn there).
    Returns (emb (P, D), lab (P,)), grouped by class in ascending label order.
    """
    b, d, h, w = embeddings.shape
    if labels.shape != (b, h, w):
        raise ValueError(f"labels {tuple(labels.shape)} do not match embeddings {tuple(embeddings.shape)}")
    flat = labels.reshape(-1)
    idx = (flat != ignore).nonzero().squeeze(1)
    # Shuffle, then stable-sort by label: each class's pixels come in random order, so the first
    # points_per_class of each class are a uniform sample of it.
    dev = generator.device if generator is not None else flat.device
    idx = idx[torch.rand(idx.numel(), generator=generator, device=dev).to(flat.device).argsort()]
    lab, order = flat[idx].sort(stable=True)
    idx = idx[order]
    rank = torch.arange(lab.numel(), device=lab.device) - torch.searchsorted(lab, lab)
    keep = idx[rank < points_per_class]
    return embeddings.permute(0, 2, 3, 1).reshape(-1, d)[keep], flat[keep]


def dense_contrastive_loss(embeddings: torch.Tensor, labels: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """L_dcl (METHOD.md §5.3), InfoNCE over already-sampled points.

    embeddings: (P, D), L2-normalised here; labels: (P,). With s_ij = i·j / tau,
    L(i) = -(1/|P_i|) Σ_{p∈P_i} log( exp(s_ip) / (exp(s_ip) + Σ_{n∈N_i} exp(s_in)) ),
    P_i = the other points with i's label, N_i = the points with another label. Returns the mean
    of L(i) over anchors with at least one positive, or 0 (with a graph) when there is none.
    """
    z = F.normalize(embeddings.float(), dim=1)
    sim = z @ z.T / tau  # (P, P)
    same = labels[:, None] == labels[None, :]
    pos = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    # log Σ_{n∈N_i} exp(s_in); a very negative finite fill (not -inf) keeps anchors without
    # negatives free of NaN gradients: their log-ratio is then exactly 0.
    neg = torch.logsumexp(sim.masked_fill(same, torch.finfo(sim.dtype).min / 2), dim=1, keepdim=True)
    log_ratio = sim - torch.logaddexp(sim, neg)  # (P, P): log( exp(s_ip) / (exp(s_ip) + Σ_n exp(s_in)) )
    n_pos = pos.sum(1)
    anchors = n_pos > 0
    if not anchors.any():
        return embeddings.sum() * 0
    per_anchor = -(log_ratio * pos).sum(1)[anchors] / n_pos[anchors]
    return per_anchor.mean()


def student_targets(p_teacher: torch.Tensor, p_prev: torch.Tensor, old_classes: Sequence[int],
                    new_classes: Sequence[int], alpha: float, beta: float, background: str = "min",
                    beta_on: str = "prev", image_labels: torch.Tensor | None = None) -> torch.Tensor:
    """Soft targets ŷ^t of the student (METHOD.md §5.5); detached, no gradient flows through them.

    p_teacher: (B, C, H, W) teacher sigmoid probabilities, channel = class id, 0 = background.
    p_prev: previous model's probabilities, C or 1 + len(old_classes) channels (channel = class id).
    old_classes / new_classes: channel ids (no 0). image_labels: optional (B, C) K(x); new classes
    absent from an image get teacher probability 0 there (before the argmax and in the soft part).

    hard = one-hot argmax of the teacher over {bg} ∪ new (old channels excluded, as WILSON's label
    mask; exact ties go to bg, then to the lower class id).
    - new c:  q_c = alpha·hard_c + (1 - alpha)·p_T,c
    - old c:  q_c = beta·p_prev,c + (1 - beta)·p_T,c   (beta_on="teacher": beta on p_T instead)
    - bg:     "min": min(p_prev,bg, alpha·hard_bg + (1 - alpha)·p_T,bg); "blend": as old classes.
    Channels in neither list stay 0. Returns q (B, C, H, W).
    """
    old, new = list(old_classes), list(new_classes)
    if 0 in old or 0 in new or set(old) & set(new):
        raise ValueError(f"old {old} and new {new} classes must be disjoint channel ids > 0")
    if background not in ("min", "blend") or beta_on not in ("prev", "teacher"):
        raise ValueError(f"background={background!r} (min|blend), beta_on={beta_on!r} (prev|teacher)")
    if old and max(old) >= p_prev.shape[1]:
        raise ValueError(f"p_prev has {p_prev.shape[1]} channels, old class {max(old)} is out of range")
    p_t, p_prev = p_teacher.detach(), p_prev.detach()
    cand = [0, *new]
    soft = p_t[:, cand]  # (B, 1 + n_new, H, W)
    if image_labels is not None:
        present = torch.ones(p_t.shape[0], len(cand), dtype=p_t.dtype, device=p_t.device)
        present[:, 1:] = image_labels[:, new].to(p_t.dtype)
        soft = soft * present[:, :, None, None]
    hard = F.one_hot(soft.argmax(1), len(cand)).permute(0, 3, 1, 2).to(p_t.dtype)
    mixed = alpha * hard + (1 - alpha) * soft  # (B, 1 + n_new, H, W)
    w_prev = beta if beta_on == "prev" else 1 - beta

    def blend(ch: list[int]) -> torch.Tensor:
        return w_prev * p_prev[:, ch] + (1 - w_prev) * p_t[:, ch]

    q = torch.zeros_like(p_t)
    q[:, new] = mixed[:, 1:]
    if old:
        q[:, old] = blend(old)
    q[:, 0] = torch.minimum(p_prev[:, 0], mixed[:, 0]) if background == "min" else blend([0])[:, 0]
    return q


def student_bce(logits: torch.Tensor, targets: torch.Tensor, channels: Sequence[int] | None = None,
                weight: torch.Tensor | None = None) -> torch.Tensor:
    """L_seg (METHOD.md §5.5): BCE-with-logits of the student against the soft targets q.

    logits, targets: (B, C, H, W); channels: the ones to score (None = all seen classes).
    weight: optional (B,) per-image weights. Reduction: mean over classes and pixels per image,
    then the mean over images, or Σ_n w_n ℓ_n / (Σ_n w_n + 1e-5) with weights (WILSON's batch
    weighting). Note WILSON sums over classes; this is that value divided by the channel count.
    """
    if channels is not None:
        logits, targets = logits[:, list(channels)], targets[:, list(channels)]
    per_image = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype),
                                                   reduction="none").mean((1, 2, 3))  # (B,)
    if weight is None:
        return per_image.mean()
    weight = weight.to(per_image.dtype)
    return (weight * per_image).sum() / (weight.sum() + 1e-5)


def total_loss(terms: Mapping[str, torch.Tensor], lambda_dcl: float) -> torch.Tensor:
    """L = L_seg + L_bce^T + lambda_dcl·L_dcl + L_old^T (METHOD.md §5.5).

    terms: scalar tensors under "seg", "teacher_bce", "dcl", "old"; a missing key counts 0.
    lambda_dcl = 0 gives the contrastive term exactly zero gradient (L_dcl is always finite).
    """
    weights = {"seg": 1.0, "teacher_bce": 1.0, "dcl": lambda_dcl, "old": 1.0}
    unknown = set(terms) - set(weights)
    if unknown:
        raise ValueError(f"unknown loss terms {sorted(unknown)}; expected {sorted(weights)}")
    parts = [weights[name] * value for name, value in terms.items()]
    return sum(parts) if parts else torch.zeros(())


def _pixel_mean(loss: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean of (B, C, H, W) over channels and pixels, pixels weighted by (B, H, W) ``weight``."""
    if weight is None:
        return loss.mean()
    w = weight.to(loss.dtype)[:, None]  # (B, 1, H, W)
    denom = w.sum() * loss.shape[1]
    if denom == 0:
        return loss.sum() * 0
    return (loss * w).sum() / denom
