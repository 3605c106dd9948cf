"""FMWISS (Yu et al., CVPR 2023; METHOD.md §5): foundation-model pseudo masks, plug-in teacher,
dense contrastive loss, memory copy-paste, soft-label distillation.

Step 0 trains the student with pixel BCE on its labels and archives B instances per class into the
copy-paste memory. A weak step t (image labels of C^t only) runs, per batch:

  cached CLIP features + ViT q/k --(seeds re-sampled, binarise, fuse; wilss.pseudo)--> pseudo labels
  image, pseudo labels --(copy-paste an old-class instance)--> image', labels'
  encoder(image') -> student ASPP -> p_S          encoder(image') -> teacher ASPP -> p_T, embeddings
  L = L_seg(p_S, q(p_T, p_{t-1}; alpha, beta)) + L_bce^T + lambda_dcl L_dcl + L_old^T

The teacher trains alone for ``warmup_epochs`` before L_seg switches on. No pixel label of a weak
step is used for training; ground truth only measures the pseudo labels' quality after the step.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from wilss.data import labels
from wilss.data.copypaste import CopyPasteMemory
from wilss.data.dataset import SegmentationDataset
from wilss.data.datasets import default_cache_dir
from wilss.data.labels import IGNORE
from wilss.data.transforms import eval_transform, train_transform
from wilss.losses import fmwiss as L
from wilss.losses.wilson import pixel_bce
from wilss.methods.base import Method, StepContext, default_param_groups
from wilss.metrics import ConfusionMatrix
from wilss.models.teacher import PlugInTeacher

PROBE_IMAGES = 64  # training images the per-epoch teacher diagnostic reads


def sample_into_crop(maps: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Whole-image maps (B, h, w) long -> the augmented crops' pixels (B, H, W) via coords (B, H, W, 2)."""
    out = F.grid_sample(maps[:, None].float(), coords, mode="nearest", align_corners=False)
    return out[:, 0].round().long()


class FMWISS(Method):
    name = "fmwiss"
    weak = True
    sections = ("foundation", "pseudo", "fmwiss")
    step0_keys = ("fmwiss.memory_per_class",)  # step 0 fills the memory; nothing else of FMWISS acts there

    def __init__(self):
        self.memory: CopyPasteMemory | None = None
        self.evidence = None
        self.background: torch.Tensor | None = None  # (d,) background prompt, score_norm=softmax_bg only
        self.teacher: PlugInTeacher | None = None
        self.probe: dict = {}  # the last epoch's teacher diagnostic (result-row columns)

    def check(self, cfg) -> None:
        """Resolve both foundation models' weights (names, tags, files) now, not after step 0."""
        from wilss.foundation.clip import clip_weights
        from wilss.foundation.vit import vit_weights

        if cfg.pseudo.source == "ground_truth":  # no foundation model is used
            return
        clip_weights(cfg.foundation)
        vit_weights(cfg.foundation)

    def uses_evidence(self, cfg) -> bool:
        return cfg.pseudo.source == "foundation"

    # ---------------------------------------------------------------------------------------------
    # data

    def train_dataset(self, ctx: StepContext) -> torch.utils.data.Dataset:
        if ctx.step == 0:
            return super().train_dataset(ctx)
        cfg, data = ctx.cfg, ctx.data
        if cfg.pseudo.source == "ground_truth":  # the diagnostic: the new classes' true masks, the rest bg
            lut = labels.train_lut(ctx.task, ctx.step, "bg")
        else:
            lut = np.full(256, IGNORE, dtype=np.uint8)  # weak step: masks never reach the loss
        return SegmentationDataset(
            data.train, self.train_indices(ctx), lut,
            train_transform(cfg.data.crop_size, (cfg.data.scale_min, cfg.data.scale_max)),
            labels=labels.image_labels(data.present_train, ctx.task, ctx.step), coords=True,
            extras=self._evidence_reader(ctx))

    def _evidence_reader(self, ctx: StepContext):
        """What the loader adds to each item: its cached foundation evidence (none for ground truth)."""
        return partial(self.evidence.load, ctx.data.train) if self.evidence is not None else None

    # ---------------------------------------------------------------------------------------------
    # step set-up

    def begin_step(self, ctx: StepContext) -> None:
        cfg = ctx.cfg
        if self.memory is None:
            self.memory = CopyPasteMemory(cfg.fmwiss.memory_per_class)
        self.evidence, self.teacher, self.probe = None, None, {}
        if ctx.step == 0:
            return
        if cfg.pseudo.source == "ground_truth":
            ctx.log("  pseudo masks: the true masks of the new classes (pseudo.source=ground_truth, a diagnostic)")
        else:
            self._load_evidence(ctx)
        seed = cfg.train.seed * 1000 + ctx.step
        self.gen = torch.Generator(device=ctx.device).manual_seed(seed)  # seeds of the pseudo masks
        self.cpu_gen = torch.Generator().manual_seed(seed)  # copy-paste draws, point sampling
        if cfg.fmwiss.teacher:
            enc_channels = ctx.model.aspp.convs[0][0].in_channels
            self.teacher = PlugInTeacher(enc_channels, ctx.n_seen, cfg.model.aspp_channels, cfg.fmwiss.embed_dim,
                                         cfg.model.output_stride).to(ctx.device)

    def _load_evidence(self, ctx: StepContext) -> None:
        """The step's foundation evidence (computed where missing) and the new classes' text embeddings."""
        from wilss.foundation import FoundationEvidence
        from wilss.foundation.prompts import BACKGROUND

        cfg = ctx.cfg
        t0 = time.perf_counter()
        # Evidence is shared by every run on the machine (content-addressed), not kept per run folder.
        cache = Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_cache_dir()
        self.evidence = FoundationEvidence(cfg.foundation, cache, ctx.device)
        stats = self.evidence.ensure(ctx.data.train, self.train_indices(ctx), log=ctx.log)
        names = [ctx.data.class_names[c] for c in ctx.new_channels]
        self.text = self.evidence.text_embeddings(names).to(ctx.device)  # (C_new, d)
        # softmax normalisation of M_init uses CLIP's own logit scale (building CLIP just for it)
        softmax = cfg.foundation.score_norm in ("softmax", "softmax_bg")
        self.logit_scale = float(self.evidence.clip.logit_scale) if softmax else 100.0
        self.background = (self.evidence.text_embeddings([BACKGROUND])[0].to(ctx.device)
                           if cfg.foundation.score_norm == "softmax_bg" else None)  # (d,)
        ctx.stats.update({"cache.evidence_hits": stats["hits"], "cache.evidence_misses": stats["misses"],
                          "time.evidence_s": time.perf_counter() - t0, "time.pseudo_s": 0.0})
        ctx.log(f"  foundation evidence: {stats['hits']} cached, {stats['misses']} computed "
                f"({time.perf_counter() - t0:.1f}s)")

    def param_groups(self, ctx: StepContext, lr: float) -> list[dict]:
        groups = default_param_groups(ctx.model, lr, ctx.cfg.train)
        if self.teacher is not None and ctx.step > 0:
            groups.append({"params": list(self.teacher.parameters()), "lr": lr * ctx.cfg.train.head_lr_mult,
                           "name": "teacher"})
        return groups

    def begin_epoch(self, ctx: StepContext) -> None:
        if self.teacher is not None and ctx.step > 0:
            self.teacher.train()

    def end_epoch(self, ctx: StepContext) -> None:
        """Log whether the teacher learns: its mean p_c on the true pixels of each new class c and off them,
        on the step's first PROBE_IMAGES training images (their masks measure, they never train)."""
        if self.teacher is None or ctx.step == 0:
            return
        on, off = self._teacher_probe(ctx)
        names = [ctx.data.class_names[c] for c in ctx.new_channels]
        ctx.log("    teacher p_c on / off the pixels of c: "
                + ", ".join(f"{n} {a:.2f}/{b:.2f}" for n, a, b in zip(names, on, off)))
        self.probe = {"teacher.p_on": float(np.nanmean(on)), "teacher.p_off": float(np.nanmean(off))}

    @torch.no_grad()
    def _teacher_probe(self, ctx: StepContext) -> tuple[np.ndarray, np.ndarray]:
        """(C_new,) mean teacher probability of each new class on its true pixels and on the other valid
        pixels of the probe images (NaN where a class has no pixel there); restores the train modes."""
        lut = labels.train_lut(ctx.task, ctx.step, "ignore")  # new -> channel, old/bg -> 0, void ignored
        indices = self.train_indices(ctx)[:PROBE_IMAGES]
        modes = ctx.model.training, self.teacher.training
        ctx.model.eval()
        self.teacher.eval()
        new = list(ctx.new_channels)
        sums = torch.zeros(4, len(new), dtype=torch.float64, device=ctx.device)  # on sum, on n, off sum, off n
        for batch in self._eval_loader(ctx, lut, weak=False, indices=indices):
            image, mask = batch["image"].to(ctx.device), batch["mask"].to(ctx.device)
            logits, _ = self.teacher(ctx.model.encode(image))
            p = torch.sigmoid(F.interpolate(logits, size=mask.shape[-2:], mode="bilinear", align_corners=False))
            valid = mask != IGNORE
            for i, c in enumerate(new):
                on, off = mask == c, valid & (mask != c)
                sums[:, i] += torch.stack([p[:, c][on].sum(), on.sum(), p[:, c][off].sum(), off.sum()]).double()
        ctx.model.train(modes[0])
        self.teacher.train(modes[1])
        sums = sums.cpu().numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            return sums[0] / sums[1], sums[2] / sums[3]

    # ---------------------------------------------------------------------------------------------
    # losses

    def losses(self, ctx: StepContext, batch: dict) -> dict[str, torch.Tensor]:
        if ctx.step == 0:
            bce = pixel_bce(ctx.model(batch["image"]), batch["mask"])  # WILSON's step 0 (§4.2)
            return {"loss": bce, "seg": bce}
        return self._weak_losses(ctx, batch)

    def pseudo_labels(self, ctx: StepContext, batch: dict):
        """Online pseudo masks of the batch's whole images (wilss.pseudo) at the evidence grid."""
        from wilss.pseudo import pseudo_masks

        fcfg = ctx.cfg.foundation
        valid = batch["labels"][:, ctx.n_old:] > 0  # (B, C_new): the image labels K(x)
        return pseudo_masks(batch["clip"].float(), self.text, batch["q"], batch["k"], valid, ctx.cfg.pseudo,
                            self.gen, score_norm=fcfg.score_norm, logit_scale=self.logit_scale,
                            vit_grid=self.evidence.vit_grid, background_emb=self.background)

    def _channels(self, ctx: StepContext, label_map: torch.Tensor) -> torch.Tensor:
        """Pseudo label index (0 bg, i = i-th new class) -> channel id (task order)."""
        lut = torch.tensor([0, *ctx.new_channels], device=label_map.device)
        return lut[label_map]

    def _weak_losses(self, ctx: StepContext, batch: dict) -> dict[str, torch.Tensor]:
        f = ctx.cfg.fmwiss
        old = list(range(1, ctx.n_old))
        new = list(ctx.new_channels)
        if ctx.cfg.pseudo.source == "ground_truth":
            target = batch["mask"].long()  # (B, H, W) channel ids of the new classes, 0 elsewhere
        else:
            t0 = time.perf_counter()
            with torch.no_grad():
                pm = self.pseudo_labels(ctx, batch)
                target = self._channels(ctx, sample_into_crop(pm.labels, batch["coords"]))  # (B, H, W)
            ctx.stats["time.pseudo_s"] = ctx.stats.get("time.pseudo_s", 0.0) + time.perf_counter() - t0

        image = batch["image"]
        pasted = torch.zeros_like(target)
        if f.copy_paste and self.memory is not None and len(self.memory):
            image, pasted = self.memory.paste(image, f.paste_prob, (f.paste_scale_min, f.paste_scale_max),
                                              self.cpu_gen, f.pastes_per_image)
            target = torch.where(pasted > 0, pasted, target)

        model = ctx.model
        size = image.shape[-2:]
        enc = model.encode(image)
        terms: dict[str, torch.Tensor] = {}
        if self.teacher is not None:
            t_logits, emb = self.teacher(enc)
            t_up = F.interpolate(t_logits, size=size, mode="bilinear", align_corners=False)
            onehot = F.one_hot(target, ctx.n_seen).permute(0, 3, 1, 2).float()  # (B, C, H, W)
            pos_weight = [1.0] + [f.teacher_pos_weight] * len(new) if f.teacher_pos_weight != 1 else None
            terms["teacher_bce"] = L.teacher_bce(t_up, onehot[:, [0, *new]], [0, *new], pos_weight=pos_weight)
            if f.dcl and f.lambda_dcl > 0:
                small = F.interpolate(target[:, None].float(), size=emb.shape[-2:], mode="nearest")[:, 0].long()
                pts, lab = L.sample_points(emb, small, f.points_per_class, self.cpu_gen)
                terms["dcl"] = L.dense_contrastive_loss(pts, lab, f.tau)
            if f.copy_paste and bool((pasted > 0).any()):
                terms["old"] = L.old_class_bce(t_up, pasted, old, region=(pasted > 0).flatten(1).any(1))
            p_teacher = torch.sigmoid(t_up.detach())
        else:  # component off: the student learns from the fused pseudo masks directly
            p_teacher = F.one_hot(target, ctx.n_seen).permute(0, 3, 1, 2).float()

        if ctx.epoch >= f.warmup_epochs or self.teacher is None:
            s_logits = F.interpolate(model.classify(model.aspp(enc)), size=size, mode="bilinear",
                                     align_corners=False)
            with torch.no_grad():
                p_prev = torch.sigmoid(ctx.prev_model(image))
                q = L.student_targets(p_teacher, p_prev, old, new, f.alpha, f.beta, background=f.background,
                                      beta_on=f.beta_on, image_labels=batch["labels"])
            terms["seg"] = L.student_bce(s_logits, q)
        loss = L.total_loss(terms, f.lambda_dcl)
        return {"loss": loss, **terms}

    # ---------------------------------------------------------------------------------------------
    # after the step: memory, pseudo-label quality

    def end_step(self, ctx: StepContext) -> dict:
        with torch.no_grad():
            ctx.model.eval()
            cols = self._fill_memory(ctx)
            if ctx.step > 0 and self.evidence is not None:
                cols |= self._pseudo_quality(ctx)
        return cols | self.probe

    def _eval_loader(self, ctx: StepContext, lut: np.ndarray, weak: bool, indices: np.ndarray | None = None):
        cfg = ctx.cfg
        indices = self.train_indices(ctx) if indices is None else indices
        ds = SegmentationDataset(
            ctx.data.train, indices, lut, eval_transform("crop", cfg.data.crop_size),
            labels=labels.image_labels(ctx.data.present_train, ctx.task, ctx.step) if weak else None,
            coords=weak, extras=self._evidence_reader(ctx) if weak else None)
        return torch.utils.data.DataLoader(ds, batch_size=cfg.eval.batch_size, num_workers=cfg.data.loader_workers)

    def _fill_memory(self, ctx: StepContext) -> dict:
        """Archive instances of the step's new classes: gt masks at step 0, predictions within the
        image labels at weak steps; nothing at the task's last step (a pass over its images whose
        result no step would read)."""
        if ctx.cfg.fmwiss.memory_per_class == 0:
            return {}
        if ctx.step == ctx.task.n_steps - 1:  # only later steps paste from it: there are none
            return {"memory.instances": len(self.memory)}
        new = list(range(1, ctx.n_seen)) if ctx.step == 0 else list(ctx.new_channels)
        lut = labels.train_lut(ctx.task, ctx.step, "ignore") if ctx.step == 0 else np.zeros(256, np.uint8)
        for batch in self._eval_loader(ctx, lut, weak=ctx.step > 0):
            image = batch["image"].to(ctx.device)
            if ctx.step == 0:
                target = batch["mask"].to(ctx.device)
            else:
                pred = ctx.model(image).argmax(1)
                image_labels = batch["labels"].to(ctx.device)  # (B, C)
                present = image_labels.gather(1, pred.flatten(1)).view_as(pred) > 0  # pred's class is labelled
                target = torch.where(present, pred, torch.zeros_like(pred))
            self.memory.collect(image, target, new)
            if all(self.memory.full(c) for c in new):
                break
        return {"memory.instances": len(self.memory)}

    def _pseudo_quality(self, ctx: StepContext) -> dict:
        """mIoU (bg + new classes) of M_init, M_seeds and the fused mask against the true masks, next to
        two masks that know only the image labels: all ones for each labelled class (``ones``) and a
        random half of the pixels for each (``random``); where labelled classes overlap, a random class
        takes the pixel (the real masks use the M_init scores there)."""
        from wilss.pseudo import label_map

        lut = labels.train_lut(ctx.task, ctx.step, "ignore")  # new -> channel, old/bg -> 0, void ignored
        kinds = ("init", "seeds", "fused", "ones", "random")
        cms = {k: ConfusionMatrix(ctx.n_seen, ctx.device) for k in kinds}
        gen = torch.Generator(device=ctx.device).manual_seed(ctx.cfg.train.seed)  # the baselines' draws
        for batch in self._eval_loader(ctx, lut, weak=True):
            batch = {k: v.to(ctx.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            pm = self.pseudo_labels(ctx, batch)
            valid = batch["labels"][:, ctx.n_old:] > 0
            noise = torch.rand(pm.scores.shape, generator=gen, device=ctx.device)  # (B, C, h, w)
            masks = {"init": (pm.init, pm.scores), "seeds": (pm.seeds, pm.scores), "fused": (pm.fused, pm.scores),
                     "ones": (torch.ones_like(pm.init), noise),
                     "random": (torch.rand(noise.shape, generator=gen, device=ctx.device) < 0.5, noise)}
            for key, (mask, scores) in masks.items():
                if mask is None:  # fusion "none" computes no seed attention
                    continue
                pred = self._channels(ctx, sample_into_crop(label_map(mask, scores, valid), batch["coords"]))
                cms[key].update(pred, batch["mask"])
        keep = [0, *ctx.new_channels]
        return {f"pseudo.miou_{k}": float(np.nanmean(cm.iou()[keep])) if cm.mat.sum() else float("nan")
                for k, cm in cms.items()}

    # ---------------------------------------------------------------------------------------------
    # resume

    def state(self) -> dict:
        return {"memory": self.memory.state()} if self.memory is not None else {}

    def restore(self, state: dict) -> None:
        if "memory" in state:
            self.memory = CopyPasteMemory.from_state(state["memory"])
