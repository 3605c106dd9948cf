"""The two bounds every table reports: ``finetune`` (lower) and ``joint`` (upper).

finetune: each step trains on its own images with cross-entropy on its own pixel labels (old and
future classes are background), starting from the previous step's weights: it forgets old classes.
joint: one step over every training image with every class's pixel labels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wilss.data.labels import IGNORE
from wilss.methods.base import Method, StepContext


class Finetune(Method):
    name = "finetune"

    def losses(self, ctx: StepContext, batch: dict) -> dict[str, torch.Tensor]:
        logits = ctx.model(batch["image"])  # (B, K, H, W)
        ce = F.cross_entropy(logits, batch["mask"], ignore_index=IGNORE)
        return {"loss": ce, "ce": ce}


class Joint(Finetune):
    name = "joint"
    joint = True
