"""DINO self-distillation (Caron et al., ICCV 2021), small enough to pretrain the tiny ViT on a CPU.

A student and an EMA teacher share the architecture (ViT + projection head). Every image gives two
global crops and a few local crops; the teacher sees the global crops only, the student all of them,
and the student's softmax (temperature 0.1) is trained to match the teacher's centred, sharpened softmax
(temperature 0.04) of every *other* view. Centering (an EMA of the teacher's mean output) and sharpening
together keep the teacher from collapsing. Augmentations are batched tensor ops (crops via
``affine_grid``). Two departures from the ImageNet recipe, both for the tiny synthetic ViT: BatchNorm in
the head (DINO's ``use_bn_in_head``), and no colour jitter by default: what FMWISS asks of this model is
seed attention that spreads over the seed's object, and on the synthetic scenes an object is a region of
one colour or texture, so colour-invariant features would only blur that grouping.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class DinoHead(nn.Module):
    """MLP -> L2-normalised bottleneck -> weight-normalised prototypes (norm fixed to 1)."""

    def __init__(self, dim: int, out_dim: int = 1024, hidden: int = 256, bottleneck: int = 64):
        super().__init__()
        # BatchNorm (DINO's use_bn_in_head): tiny ViTs on look-alike scenes start with nearly equal
        # embeddings, and centering would flatten the teacher before sharpening can separate them.
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.GELU(),
                                 nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.GELU(),
                                 nn.Linear(hidden, bottleneck))
        self.prototypes = nn.Parameter(torch.randn(out_dim, bottleneck) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1)  # (N, bottleneck)
        return x @ F.normalize(self.prototypes, dim=-1).T  # (N, out_dim)


def random_resized_crop(x: torch.Tensor, size: int, scale: tuple[float, float],
                        gen: torch.Generator) -> torch.Tensor:
    """Per-sample random crop (area share in ``scale``, aspect 3/4..4/3), horizontal flip, resize.

    x: (B, 3, H, W) -> (B, 3, size, size), bilinear.
    """
    b = x.shape[0]
    area = torch.empty(b).uniform_(*scale, generator=gen)
    log_ratio = torch.empty(b).uniform_(math.log(3 / 4), math.log(4 / 3), generator=gen)
    w = (area * log_ratio.exp()).sqrt().clamp(max=1.0)  # half-widths in [-1, 1] units, times 2
    h = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
    cx = (torch.rand(b, generator=gen) * 2 - 1) * (1 - w)
    cy = (torch.rand(b, generator=gen) * 2 - 1) * (1 - h)
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def colour_jitter(x: torch.Tensor, gen: torch.Generator, solarize: float = 0.0) -> torch.Tensor:
    """Brightness, contrast, saturation, channel permutation (a coarse hue change), grey, solarisation.

    x: (B, 3, H, W) in [0, 1] -> same.
    """
    b = x.shape[0]

    def u(lo: float, hi: float) -> torch.Tensor:
        return torch.empty(b, 1, 1, 1).uniform_(lo, hi, generator=gen)

    x = x * u(0.6, 1.4)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * u(0.6, 1.4) + mean
    grey = (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:]).expand_as(x)
    x = grey + (x - grey) * u(0.4, 1.6)
    perm = torch.stack([torch.randperm(3, generator=gen) for _ in range(b)])  # (B, 3)
    x = x.gather(1, perm[:, :, None, None].expand_as(x))
    x = torch.where(torch.rand(b, 1, 1, 1, generator=gen) < 0.2, grey, x)
    x = x.clamp(0, 1)
    return torch.where(torch.rand(b, 1, 1, 1, generator=gen) < solarize, torch.where(x > 0.5, 1 - x, x), x)


def views(x: torch.Tensor, gen: torch.Generator, n_local: int, size: int,
          norm: Callable[[torch.Tensor], torch.Tensor], colour: bool = True) -> list[torch.Tensor]:
    """Two global views (size, area 30-100%) and ``n_local`` local ones (size/2, area 5-30%)."""
    def jitter(v: torch.Tensor, solarize: float = 0.0) -> torch.Tensor:
        return norm(colour_jitter(v, gen, solarize) if colour else v)

    out = [jitter(random_resized_crop(x, size, (0.3, 1.0), gen), s) for s in (0.0, 0.2)]
    out += [jitter(random_resized_crop(x, size // 2, (0.05, 0.3), gen)) for _ in range(n_local)]
    return out


def dino_loss(student: torch.Tensor, teacher: torch.Tensor, center: torch.Tensor, n_views: int,
              t_student: float = 0.1, t_teacher: float = 0.04) -> torch.Tensor:
    """Cross-entropy between teacher (2 global views) and student (all views) outputs, other views only.

    student: (n_views * B, K); teacher: (2 * B, K); center: (1, K).
    """
    s = (student / t_student).log_softmax(-1).chunk(n_views)
    t = ((teacher - center) / t_teacher).softmax(-1).detach().chunk(2)
    terms = [-(t[i] * s[v]).sum(-1).mean() for i in range(2) for v in range(n_views) if v != i]
    return torch.stack(terms).mean()


def cosine(step: int, total: int, start: float, end: float) -> float:
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


def train_dino(backbone: nn.Module, images: torch.Tensor, norm: Callable[[torch.Tensor], torch.Tensor], *,
               steps: int, batch_size: int = 32, lr: float = 1e-3, n_local: int = 2, out_dim: int = 256,
               colour: bool = False, seed: int = 0, log: Callable[[str], None] = print) -> nn.Module:
    """Self-distil ``backbone`` (returns a (B, D) embedding) on ``images`` (N, 3, S, S) uint8; return the teacher's.

    The teacher (EMA of the student, momentum 0.99 -> 1, cosine) is what DINO ships and what we keep.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    dim = backbone.num_features
    student = nn.Sequential(backbone, DinoHead(dim, out_dim))
    teacher = copy.deepcopy(student).requires_grad_(False)
    center = torch.zeros(1, out_dim)
    decay, no_decay = [], []
    for name, p in student.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith(("pos_embed", "cls_token")) else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.04}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr)
    warmup, freeze_last = max(1, steps // 10), steps // 20
    size, start = images.shape[-1], time.perf_counter()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * (step + 1) / warmup if step < warmup else cosine(step - warmup, steps - warmup, lr, lr / 100)
        idx = torch.randint(len(images), (batch_size,), generator=gen)
        crops = views(images[idx].float() / 255, gen, n_local, size, norm, colour)
        with torch.no_grad():
            t_out = teacher(torch.cat(crops[:2]))  # (2B, K)
        # Views of one size share a forward pass (the token count differs between sizes).
        s_out = torch.cat([student(torch.cat(crops[:2])), student(torch.cat(crops[2:]))]) if n_local else \
            student(torch.cat(crops))
        loss = dino_loss(s_out, t_out, center, 2 + n_local)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if step < freeze_last:  # DINO: keep the prototypes still while the head settles
            student[1].prototypes.grad = None
        nn.utils.clip_grad_norm_(student.parameters(), 3.0)
        opt.step()
        with torch.no_grad():
            m = cosine(step, steps, 0.99, 1.0)
            for ps, pt in zip(student.parameters(), teacher.parameters()):
                pt.mul_(m).add_(ps.detach(), alpha=1 - m)
            center.mul_(0.9).add_(t_out.mean(0, keepdim=True), alpha=0.1)
        if (step + 1) % max(1, steps // 20) == 0 or step + 1 == steps:
            log(f"dino step {step + 1}/{steps}  loss {loss.item():.4f}  {time.perf_counter() - start:.0f}s")
    return teacher[0]
