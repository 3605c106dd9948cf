"""The method interface and the per-step context the engine hands to it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from wilss.config import Config
from wilss.data import labels
from wilss.data.tasks import Task


@dataclass
class StepContext:
    """What a method may read while training step ``step``."""

    cfg: Config
    task: Task
    step: int
    model: nn.Module  # the student being trained
    prev_model: nn.Module | None  # the frozen step t-1 model (eval mode), None at step 0
    device: torch.device

    @property
    def n_old(self) -> int:
        """Channels of background + classes of earlier steps."""
        return 1 + len(self.task.old(self.step))


class Method:
    """Base class: softmax segmentation trained on the step's own pixel labels."""

    name = "base"
    # Trains every class of the task in one step on every training image (the upper bound).
    joint = False

    def train_lut(self, task: Task, step: int, cfg: Config) -> np.ndarray:
        """Raw class id -> training label at ``step`` (METHOD.md §1.5)."""
        return labels.train_lut(task, step, cfg.data.void_policy, keep_old=self.joint, negative_value=0)

    def begin_step(self, ctx: StepContext) -> None:
        """Hook before training a step (initialise new classifiers, build teachers, ...)."""

    def losses(self, ctx: StepContext, batch: dict) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, K, H, W) logits -> (B, H, W) task-order labels."""
        return logits.argmax(dim=1)
