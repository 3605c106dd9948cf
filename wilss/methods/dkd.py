"""DKD (Baek et al., NeurIPS 2022; METHOD.md §3) and DKD-M (its class-balanced memory, §3.6).

The student has sigmoid classifiers and no background classifier: channel 0 is an auxiliary 1-channel
classifier on detached features, channels 1.. the classes in task order ([aux, c1..cK], §7.7), after
an extra 3x3 conv on the ASPP output. A pixel is background when no class sigmoid exceeds 0.5.
Step 0 trains L_mbce + L_ac; step t > 0 adds L_kd and the decomposed L_dkd+ / L_dkd- from the frozen
step t-1 model, initialises the new classifier from the auxiliary one (ACI), freezes BN and dropout,
and sets weight decay per parameter group (§3.4, §3.5).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wilss.config import Config
from wilss.data import labels
from wilss.data.labels import IGNORE
from wilss.losses import dkd as L
from wilss.methods.base import Method, StepContext, poly
from wilss.models.student import Student, build_backbone, set_bn_momentum


def warmup_poly(max_iters: int, power: float, warmup: float, start: float = 1e-3) -> Callable[[int], float]:
    """Poly, with a linear warm-up from ``start``x over the first ``warmup`` share of iterations (ADE)."""
    decay, warm = poly(max_iters, power), warmup * max_iters

    def factor(i: int) -> float:
        ramp = start + (1 - start) * i / warm if i < warm else 1.0
        return ramp * decay(i)

    return factor


def is_bn(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._BatchNorm)


def freeze_bn_and_dropout(model: nn.Module) -> None:
    """BN layers use (and keep) their running statistics; dropout is off (§3.4)."""
    for m in model.modules():
        if is_bn(m) or isinstance(m, nn.Dropout):
            m.eval()


def aux_init(model: Student) -> None:
    """ACI (§3.3): every row of the newest classifier = the auxiliary classifier's weight and bias."""
    aux, new = model.heads[0], model.heads[-1]
    with torch.no_grad():
        new.weight.copy_(aux.weight.expand_as(new.weight))
        new.bias.copy_(aux.bias.expand_as(new.bias))


def kaiming_init(head: nn.Conv2d) -> None:
    nn.init.kaiming_normal_(head.weight)
    nn.init.zeros_(head.bias)


class DKD(Method):
    name = "dkd"
    sections = ("dkd",)
    step0_keys = ("dkd.w_mbce", "dkd.w_ac", "dkd.pos_weight_step0", "dkd.warmup")

    def create_model(self, cfg: Config, step_sizes: list[int]) -> nn.Module:
        backbone, channels = build_backbone(cfg.model.backbone, cfg.model.output_stride, cfg.model.pretrained)
        model = Student(backbone, channels, step_sizes, cfg.model.aspp_channels, cfg.model.output_stride,
                        aux_classifier=True, last_conv=True)
        set_bn_momentum(model.backbone, cfg.model.bn_momentum)
        for head in model.heads:  # DKD initialises every classifier Kaiming-normal
            nn.init.kaiming_normal_(head.weight)
        return model

    def train_lut(self, task, step: int, cfg: Config) -> np.ndarray:
        # Void stays 255 under "negative" (DKD): the BCE counts it as a negative of every new class.
        return labels.train_lut(task, step, cfg.data.void_policy, negative_value=IGNORE)

    def begin_step(self, ctx: StepContext) -> None:
        if ctx.step == 0:
            return
        if ctx.cfg.dkd.aci:
            aux_init(ctx.model)
        else:
            kaiming_init(ctx.model.heads[-1])

    def begin_epoch(self, ctx: StepContext) -> None:
        if ctx.step > 0 and ctx.cfg.dkd.freeze_bn:
            freeze_bn_and_dropout(ctx.model)

    def param_groups(self, ctx: StepContext, lr: float) -> list[dict]:
        """§3.5: step 0 backbone at lr, head 10x, decay everywhere; later steps decay only the new
        classifier, and BN affine parameters leave the optimiser when BN is frozen."""
        model, train = ctx.model, ctx.cfg.train
        frozen = set()
        if ctx.step > 0 and ctx.cfg.dkd.freeze_bn:
            frozen = {id(p) for m in model.modules() if is_bn(m) for p in m.parameters()}

        def keep(params) -> list[nn.Parameter]:
            return [p for p in params if p.requires_grad and id(p) not in frozen]

        def group(name: str, params, group_lr: float, decay: float) -> dict:
            return {"name": name, "params": keep(params), "lr": group_lr, "weight_decay": decay}

        head_lr, wd = lr * train.head_lr_mult, train.weight_decay
        aspp = [*model.aspp.parameters(), *model.last_conv.parameters()]
        if ctx.step == 0:
            return [group("backbone", model.backbone.parameters(), lr, wd),
                    group("head", [*aspp, *model.heads.parameters()], head_lr, wd)]
        return [group("backbone", model.backbone.parameters(), lr, 0.0),
                group("aspp", aspp, head_lr, 0.0),
                group("old_classifiers", model.heads[:-1].parameters(), head_lr, 0.0),
                group("new_classifier", model.heads[-1].parameters(), head_lr, wd)]

    def lr_lambda(self, ctx: StepContext, max_iters: int, iters_per_epoch: int) -> Callable[[int], float]:
        return warmup_poly(max_iters, ctx.cfg.train.poly_power, ctx.cfg.dkd.warmup)

    def losses(self, ctx: StepContext, batch: dict) -> dict[str, torch.Tensor]:
        cfg, model, prev = ctx.cfg, ctx.model, ctx.prev_model
        x, target = batch["image"], batch["mask"]  # (B, 3, H, W), (B, H, W)
        f = model.features(x)  # (B, D, h, w), non-negative
        logits = _upsample(model.classify(f), x)  # (B, 1+K, H, W)
        n_old = ctx.n_old  # aux + old classes: channels [0, n_old)
        terms = {"mbce": L.mbce(logits[:, n_old:], target, n_old, L.pos_weight(cfg.dkd, ctx.step),
                                ignore_void=cfg.data.void_policy == "ignore"),
                 "ac": L.aux(logits[:, :1])}
        if prev is not None:
            with torch.no_grad():
                f_old = prev.features(x)  # (B, D, h, w)
                logits_old = _upsample(prev.classify(f_old), x)  # (B, n_old, H, W)
                pos_old, neg_old = L.decompose(_weights(prev.heads[1:]), f_old)  # (B, n_old-1, h, w) each
            pos, neg = L.decompose(_weights(model.heads[1:-1]), f)
            terms["kd"] = L.kd(logits[:, 1:n_old], logits_old[:, 1:])
            terms["dkd_pos"] = L.dkd(pos, pos_old)
            terms["dkd_neg"] = L.dkd(neg, neg_old)
        return {"loss": L.total(terms, cfg.dkd), **terms}

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        return L.predict(logits)


def _upsample(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _weights(heads) -> torch.Tensor:
    """Concatenated 1x1 classifier weights (C, D) of ``heads``."""
    return torch.cat([h.weight.flatten(1) for h in heads])


class DKDM(DKD):
    """DKD-M (§3.6): a class-balanced memory of ``dkd.memory_size`` earlier images, added to each
    step's images with labels masked to the step's classes (old-class pixels become background)."""

    name = "dkd-m"

    def __init__(self):
        self.memory: list[str] = []  # image ids of the memory after the last trained step

    def begin_step(self, ctx: StepContext) -> None:
        super().begin_step(ctx)
        if ctx.step > 0:
            self.memory = build_memory(ctx, self.memory)
            ctx.stats["memory_size"] = len(self.memory)

    def train_indices(self, ctx: StepContext) -> np.ndarray:
        own = super().train_indices(ctx)
        if ctx.step == 0 or not self.memory:
            return own
        return np.concatenate([own, _indices(ctx, self.memory)])

    def state(self) -> dict:
        return {"memory_ids": list(self.memory)}

    def restore(self, state: dict) -> None:
        self.memory = list(state.get("memory_ids", []))


def _indices(ctx: StepContext, ids: list[str]) -> np.ndarray:
    where = {image_id: i for i, image_id in enumerate(ctx.data.train.ids)}
    return np.array([where[i] for i in ids], dtype=np.int64)


def build_memory(ctx: StepContext, previous: list[str]) -> list[str]:
    """Memory for step t (§3.6): candidates are step t-1's training images (class sets from step t-1's
    classes) and the previous memory (class sets over every class before step t-1; DKD reads them
    from the old model's pseudo-labels, we from the ground-truth presence). Shuffle candidates and old
    classes, then take one unused image per class, round-robin, until ``dkd.memory_size`` are taken."""
    task, t, data, budget = ctx.task, ctx.step, ctx.data, ctx.cfg.dkd.memory_size
    rng = np.random.default_rng(ctx.cfg.train.seed * 1000 + t)
    last = np.asarray(data.train_splits[t - 1])
    kept = _indices(ctx, previous) if previous else np.zeros(0, dtype=np.int64)
    cand = np.concatenate([last, kept])
    visible = np.zeros((len(cand), data.present_train.shape[1]), dtype=bool)  # classes known per candidate
    visible[: len(last), list(task.new(t - 1))] = data.present_train[last][:, list(task.new(t - 1))]
    if len(kept):
        earlier = list(task.old(t - 1))
        visible[len(last):, earlier] = data.present_train[kept][:, earlier]
    order = rng.permutation(len(cand))
    cand, visible = cand[order], visible[order]
    classes = list(task.old(t))
    rng.shuffle(classes)
    queues = {c: [int(i) for i in cand[visible[:, c]]] for c in classes}
    chosen: list[int] = []
    taken: set[int] = set()
    while len(chosen) < budget and any(queues.values()):
        for c in classes:
            q = queues[c]
            while q and q[0] in taken:
                q.pop(0)
            if q and len(chosen) < budget:
                taken.add(q[0])
                chosen.append(int(q.pop(0)))
    return [data.train.ids[i] for i in chosen]
