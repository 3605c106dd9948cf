"""WILSON (Cermelli et al., CVPR 2022; METHOD.md §4): weakly incremental segmentation.

Step 0 trains the softmax DeepLabV3 with pixel BCE on pixel labels (§4.2). Every later step sees
image-level labels of its new classes only (``batch["labels"]``; pixel masks are never read): a
localizer on the current encoder features learns the new classes from the labels (ℓ_CLS) and the old
ones from the step t-1 model (ℓ_LOC); the encoder is distilled (ℓ_ENC); from ``wilson.pseudo_epoch``
on, the localizer also fits its own PAMR-refined pseudo-GT (ℓ_SSS) and the student learns from the
localizer's soft masks for new classes and from the old model for old classes (ℓ_SEG). The lr stays
constant until ``pseudo_epoch`` and then follows poly on the global counter (``lr_policy=warmup``).
The localizer is trained with the student but is not part of the saved model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from wilss.data.transforms import MEAN, STD
from wilss.losses import wilson as L
from wilss.methods.base import Method, StepContext, poly
from wilss.models.localizer import Localizer
from wilss.models.pamr import PAMR


def warmup_then_poly(max_iters: int, power: float, start_decay: int) -> Callable[[int], float]:
    """WILSON's ``warmup`` policy: factor 1 before iteration ``start_decay``, then poly(i) on the
    global counter (so the lr drops at once when the decay starts)."""
    decay = poly(max_iters, power)
    return lambda i: 1.0 if i < start_decay else decay(i)


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) normalised image -> RGB in [0, 1]."""
    mean = torch.tensor(MEAN, device=x.device, dtype=x.dtype)[:, None, None]
    std = torch.tensor(STD, device=x.device, dtype=x.dtype)[:, None, None]
    return x * std + mean


class WILSON(Method):
    name = "wilson"
    weak = True
    sections = ("wilson",)
    step0_keys = ("wilson.flat_lr_step0",)

    def __init__(self):
        self.localizer: nn.Module | None = None
        self.pamr: PAMR | None = None

    def begin_step(self, ctx: StepContext) -> None:
        if ctx.step == 0:
            self.localizer = None
            return
        cfg = ctx.cfg
        in_channels = ctx.model.aspp.convs[0][0].in_channels  # the encoder's output channels
        self.localizer = Localizer(in_channels, ctx.n_seen, cfg.model.aspp_channels).to(ctx.device)
        self.pamr = PAMR(cfg.wilson.pamr_iters).to(ctx.device)

    def begin_epoch(self, ctx: StepContext) -> None:
        if self.localizer is not None:
            self.localizer.train()

    def param_groups(self, ctx: StepContext, lr: float) -> list[dict]:
        model, train = ctx.model, ctx.cfg.train
        head_ids = {id(p) for p in model.head_parameters()}
        body = [p for p in model.parameters() if id(p) not in head_ids and p.requires_grad]
        mult = 1.0 if ctx.step == 0 and ctx.cfg.wilson.flat_lr_step0 else train.head_lr_mult
        groups = [{"params": body, "lr": lr, "name": "backbone"},
                  {"params": [p for p in model.head_parameters() if p.requires_grad], "lr": lr * mult,
                   "name": "head"}]
        if self.localizer is not None:
            groups.append({"params": list(self.localizer.parameters()),
                           "lr": lr * ctx.cfg.wilson.localizer_lr_mult, "name": "localizer"})
        return groups

    def lr_lambda(self, ctx: StepContext, max_iters: int, iters_per_epoch: int) -> Callable[[int], float]:
        if ctx.step == 0 or ctx.cfg.wilson.lr_policy == "poly":
            return poly(max_iters, ctx.cfg.train.poly_power)
        start = ctx.cfg.wilson.pseudo_epoch * iters_per_epoch
        return warmup_then_poly(max_iters, ctx.cfg.train.poly_power, start)

    def losses(self, ctx: StepContext, batch: dict) -> dict[str, torch.Tensor]:
        if ctx.step == 0:
            bce = L.pixel_bce(ctx.model(batch["image"]), batch["mask"])
            return {"loss": bce, "bce": bce}
        return self.weak_losses(ctx, batch["image"], batch["labels"])

    def weak_losses(self, ctx: StepContext, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Step t > 0 from images x (B, 3, H, W) and image labels (B, K) of the new classes only."""
        w, model, prev, g = ctx.cfg.wilson, ctx.model, ctx.prev_model, self.localizer
        n_old = ctx.n_old
        e = model.encode(x)  # (B, C, h, w)
        with torch.no_grad():
            e_old = prev.encode(x)
            omega = torch.sigmoid(prev.classify(prev.head_features(e_old)).float())  # (B, n_old, h, w)
        z = g(e)  # (B, K, h, w), train mode
        terms = {"cls": L.classification(z, labels, n_old),
                 "loc": L.localization_prior(z, omega),
                 "enc": L.encoder_distillation(e, e_old)}
        if ctx.epoch >= w.pseudo_epoch:
            with torch.no_grad():
                g.eval()  # the targets come from the localizer in eval mode, as WILSON
                m = torch.softmax(g(e.detach()).float(), dim=1)  # (B, K, h, w)
                g.train()
                keep = torch.cat([torch.ones_like(labels[:, :1]), labels[:, 1:]], dim=1)[..., None, None]
                small = F.interpolate(denormalize(x), size=m.shape[-2:], mode="bilinear", align_corners=True)
                refined = self.pamr(small, m) * keep  # absent classes (every old class) zeroed
                m = m * keep
                target = L.student_targets(m, omega, w.alpha)  # (B, K, h, w)
                weights = L.image_weights(target, labels, n_old)  # new channels of target = q
            terms["sss"] = L.self_supervised(z, L.pseudo_gt(refined), labels)
            logits = model.classify(model.head_features(e))  # (B, K, h, w)
            if w.seg_resolution == "full":
                logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
                target = F.interpolate(target, size=x.shape[-2:], mode="bilinear", align_corners=False)
            terms["seg"] = L.segmentation(logits, target.to(logits.dtype), weights)
        weight = {"cls": w.w_cls, "loc": w.w_loc, "enc": w.w_enc, "sss": w.w_sss, "seg": w.w_seg}
        return {"loss": sum(weight[k] * v for k, v in terms.items()), **terms}
