"""The method interface and the per-step context the engine hands to it.

A method says, for one incremental step: which model it trains (``create_model``), what a training
item holds (``train_dataset``: remapped labels, image-level labels, evidence, ...), what happens before
the step and each epoch (initialise classifiers, build a teacher, freeze BN), which parameters the
optimiser updates at which lr (``param_groups``) and with which schedule (``lr_lambda``), the loss terms
of a batch (``losses``), how logits become a prediction, and what it keeps after the step (``end_step``
adds result columns; ``state``/``restore`` carry what must survive a resume, e.g. a memory bank).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from wilss.config import Config, TrainConfig
from wilss.data import labels
from wilss.data.dataset import SegmentationDataset
from wilss.data.datasets import PreparedData
from wilss.data.tasks import Task
from wilss.data.transforms import train_transform


@dataclass
class StepContext:
    """What a method may read while training step ``step``."""

    cfg: Config
    task: Task
    step: int
    model: nn.Module  # the student being trained
    prev_model: nn.Module | None  # the frozen step t-1 model (eval mode), None at step 0
    device: torch.device
    data: PreparedData | None = None
    cache_dir: Path | None = None  # where foundation evidence and other caches live
    log: Callable[[str], None] = print
    epoch: int = 0  # set by the engine before each epoch
    epochs: int = 0
    iteration: int = 0  # global iteration within the step
    stats: dict = field(default_factory=dict)  # method-defined counters that end up in the result row

    @property
    def n_old(self) -> int:
        """Channels of background + classes of earlier steps."""
        return 1 + len(self.task.old(self.step))

    @property
    def n_seen(self) -> int:
        return self.task.n_seen(self.step)

    @property
    def new_channels(self) -> range:
        """Channel indices (task order) of the classes this step adds."""
        return range(self.n_old, self.n_seen)


def default_param_groups(model: nn.Module, lr: float, cfg: TrainConfig) -> list[dict]:
    """Two groups: backbone at lr, head (ASPP + classifiers) at lr * head_lr_mult."""
    head = {id(p) for p in model.head_parameters()}
    body = [p for p in model.parameters() if id(p) not in head and p.requires_grad]
    heads = [p for p in model.head_parameters() if p.requires_grad]
    return [{"params": body, "lr": lr, "name": "backbone"},
            {"params": heads, "lr": lr * cfg.head_lr_mult, "name": "head"}]


def poly(max_iters: int, power: float) -> Callable[[int], float]:
    """lr factor at iteration i: (1 - i / max_iters) ** power."""
    return lambda i: (1 - min(i, max_iters) / max(1, max_iters)) ** power


class Method:
    """Base class: softmax segmentation trained on the step's own pixel labels."""

    name = "base"
    # Trains every class of the task in one step on every training image (the upper bound).
    joint = False
    # Steps > 0 see image-level labels only (weakly incremental): items carry ``labels``.
    weak = False
    # Config sections the method reads (beyond data/model/train/eval), and which of their keys step 0
    # already depends on: together they decide which runs can share a step (``wilss.artifacts``).
    sections: tuple[str, ...] = ()
    step0_keys: tuple[str, ...] = ()

    def check(self, cfg: Config) -> None:
        """Refuse what would fail only later in the run (e.g. missing model files), before any training:
        ``run_protocol`` and a sweep's planning call it. Config values are already range-checked."""

    def uses_evidence(self, cfg: Config) -> bool:
        """Whether its weak steps read cached foundation evidence (``wilss.foundation``), which a sweep
        then computes once, before its trials."""
        return False

    def create_model(self, cfg: Config, step_sizes: list[int]) -> nn.Module:
        from wilss.models import create_student

        return create_student(cfg.model, step_sizes)

    def train_lut(self, task: Task, step: int, cfg: Config) -> np.ndarray:
        """Raw class id -> training label at ``step`` (METHOD.md §1.5)."""
        return labels.train_lut(task, step, cfg.data.void_policy, keep_old=self.joint, negative_value=0)

    def train_indices(self, ctx: StepContext) -> np.ndarray:
        """Which training images the step sees (indices into ``ctx.data.train``)."""
        if self.joint:  # every image that holds any class of the task
            return np.unique(np.concatenate(ctx.data.train_splits))
        return ctx.data.train_splits[ctx.step]

    def train_dataset(self, ctx: StepContext) -> torch.utils.data.Dataset:
        cfg, data = ctx.cfg, ctx.data
        image_labels = labels.image_labels(data.present_train, ctx.task, ctx.step) if self.weak else None
        return SegmentationDataset(data.train, self.train_indices(ctx), self.train_lut(ctx.task, ctx.step, cfg),
                                   train_transform(cfg.data.crop_size, (cfg.data.scale_min, cfg.data.scale_max)),
                                   labels=image_labels)

    def begin_step(self, ctx: StepContext) -> None:
        """Hook before training a step (initialise new classifiers, build teachers, ...)."""

    def begin_epoch(self, ctx: StepContext) -> None:
        """Hook after the engine put the model in train mode, before each epoch (``ctx.epoch``)."""

    def end_epoch(self, ctx: StepContext) -> None:
        """Hook after each epoch's training and its log line (diagnostics; the model is in train mode)."""

    def param_groups(self, ctx: StepContext, lr: float) -> list[dict]:
        """Optimiser groups (each may set its own ``lr`` and ``weight_decay``)."""
        return default_param_groups(ctx.model, lr, ctx.cfg.train)

    def lr_lambda(self, ctx: StepContext, max_iters: int, iters_per_epoch: int) -> Callable[[int], float]:
        return poly(max_iters, ctx.cfg.train.poly_power)

    def losses(self, ctx: StepContext, batch: dict) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, K, H, W) logits -> (B, H, W) task-order labels."""
        return logits.argmax(dim=1)

    def end_step(self, ctx: StepContext) -> dict:
        """Hook after training (before evaluation); returns extra result-row columns."""
        return {}

    def state(self) -> dict:
        """Tensors to save with the step's checkpoint (e.g. a memory bank); restored on resume."""
        return {}

    def restore(self, state: dict) -> None:
        pass
