"""MiB (Cermelli et al., CVPR 2020): unbiased cross-entropy, unbiased distillation from the step t-1
model (weight ``mib.w_kd``), and background-based initialisation of each new classifier.

Step 0 is plain cross-entropy. The student is the softmax DeepLabV3 with a background channel.
"""

from __future__ import annotations

import torch

from wilss.losses import mib as L
from wilss.methods.base import Method, StepContext


class MiB(Method):
    name = "mib"
    sections = ("mib",)

    def begin_step(self, ctx: StepContext) -> None:
        if ctx.step > 0 and ctx.cfg.mib.init_bg:
            bg, new = ctx.model.heads[0], ctx.model.heads[-1]
            L.init_from_background(bg.weight.data[0], bg.bias.data[0], new.weight.data, new.bias.data)

    def losses(self, ctx: StepContext, batch: dict) -> dict[str, torch.Tensor]:
        logits = ctx.model(batch["image"])  # (B, K, H, W)
        terms = {"ce": L.unbiased_ce(logits, batch["mask"], ctx.n_old)}
        if ctx.prev_model is not None:
            with torch.no_grad():
                old = ctx.prev_model(batch["image"])  # (B, n_old, H, W)
            terms["kd"] = L.unbiased_kd(logits, old)
            return {"loss": terms["ce"] + ctx.cfg.mib.w_kd * terms["kd"], **terms}
        return {"loss": terms["ce"], **terms}
