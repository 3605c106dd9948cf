"""Presets: full configs by name, one per setting a user starts from.

``synthetic`` is the embedded default (offline, CPU, minutes); ``voc``, ``ade`` and ``coco-voc`` are the
protocols at paper scale; ``voc-dkd``, ``ade-dkd``, ``voc-mib``, ``voc-wilson``, ``voc-fmwiss``, ... pin each method's
published settings (METHOD.md §3-§5), so a paper's defaults are one preset name away.
"""

from __future__ import annotations

import dataclasses

from wilss.config import (
    Config,
    DataConfig,
    DKDConfig,
    EvalConfig,
    FMWISSConfig,
    FoundationConfig,
    MiBConfig,
    ModelConfig,
    PseudoConfig,
    TrainConfig,
    WILSONConfig,
)
from wilss.errors import ConfigError


def _synthetic() -> Config:
    """The embedded default: synthetic benchmark, tiny student, whole protocol in minutes on a CPU.

    The tiny backbone starts from the shipped weights pretrained on other synthetic scenes with image
    labels only (the stand-in for ImageNet, ``wilss.models.pretrain_tiny``); AdamW because it reaches a
    usable student in a dozen epochs on a CPU.
    """
    return Config(
        model=ModelConfig(backbone="resnet-tiny", pretrained="synthetic"),
        train=TrainConfig(optimizer="adamw", lr=1e-3, lr_next=5e-4, head_lr_mult=3.0, epochs=12, epochs_next=8),
        # Tiny CLIP (a conv tower of bounded receptive field) and DINO ViT pretrained on other synthetic
        # scenes (wilss.foundation.pretrain_synthetic); short prompts: the tiny text tower only ever read a
        # handful of caption forms. M_init competes with a background prompt (score_norm softmax_bg): with
        # min-max maps this CLIP's M_init is 23.8 mIoU in an FMWISS run, with the prompt 37.8 (an all-ones
        # mask 12.0; docs/fmwiss-synthetic.md). The paper presets keep min-max.
        foundation=FoundationConfig(clip_model="wilss-tiny-clip-fcn", clip_pretrained="synthetic",
                                    vit_model="wilss_tiny_vit", vit_pretrained="synthetic", resolution=64,
                                    prompts="short", score_norm="softmax_bg"),
        # The paper warms the teacher up for 5 of its 40 epochs; 1 of the 8 here keeps that share (five
        # would leave the student 3 epochs, after 5 in which only the teacher's losses move the shared
        # encoder). The teacher keeps the paper's plain BCE (teacher_pos_weight 1): a positive weight
        # helps it with true masks but hurts with these pseudo masks (docs/fmwiss-synthetic.md §3).
        fmwiss=FMWISSConfig(warmup_epochs=1),
    )


def _voc() -> Config:
    """Pascal VOC 2012 + SBD with DeepLabV3 ResNet-101 at 512 px (METHOD.md §1.6, §3.5, §4.2)."""
    return Config(
        data=DataConfig(dataset="voc", task="15-5", crop_size=512, loader_workers=8),
        model=ModelConfig(backbone="resnet101", pretrained="imagenet", output_stride=16,
                          aspp_channels=256, bn_momentum=0.01),
        train=TrainConfig(epochs=30, epochs_next=30, batch_size=24, lr=0.01, lr_next=0.001, log_every=50),
        eval=EvalConfig(size=512, batch_size=8),
    )


def _ade() -> Config:
    """ADE20K overlap protocol with DeepLabV3 ResNet-101 (METHOD.md §1.8)."""
    base = _voc()
    return dataclasses.replace(
        base,
        data=dataclasses.replace(base.data, dataset="ade", task="100-50", void_policy="ignore"),
        train=dataclasses.replace(base.train, epochs=60, epochs_next=60, lr=0.0025, lr_next=0.00025),
    )


def _coco_voc() -> Config:
    """COCO-to-VOC (WILSON protocol, METHOD.md §1.7); the paper's WRN-38 is replaced by ResNet-101."""
    base = _voc()
    return dataclasses.replace(
        base,
        data=dataclasses.replace(base.data, dataset="coco-voc", task="coco-to-voc", overlap=False,
                                 crop_size=448),
    )


def _voc_dkd(method: str = "dkd") -> Config:
    """DKD on VOC (METHOD.md §3.5, §7.8-§7.10): SGD Nesterov, lr 1e-3 / 1e-4, 60 epochs per step,
    batch 32, head 10x, os 16, backbone BN momentum 0.01, pos_weight 2 at step 0 then 1, void a
    negative; evaluated the DKD way (future classes -> bg, val images holding a seen class, absent
    classes count 0)."""
    base = _voc()
    return dataclasses.replace(
        base, method=method,
        data=dataclasses.replace(base.data, void_policy="negative"),
        train=dataclasses.replace(base.train, optimizer="sgd", lr=1e-3, lr_next=1e-4, epochs=60,
                                  epochs_next=60, batch_size=32, head_lr_mult=10.0, weight_decay=1e-4),
        eval=dataclasses.replace(base.eval, future_classes="bg", selection="seen", average="all"),
        dkd=DKDConfig(pos_weight_step0=2.0, pos_weight=1.0, memory_size=100),
    )


def _ade_dkd(method: str = "dkd") -> Config:
    """DKD on ADE20K 100-50 (METHOD.md §3.5): lr 2.5e-3 / 2.5e-4, 100 epochs, batch 24, pos_weight 35
    at every step, warm-up poly (20% of the iterations from 0.001x), memory 300; future classes ignored."""
    base = _ade()
    return dataclasses.replace(
        base, method=method,
        data=dataclasses.replace(base.data, void_policy="negative"),
        train=dataclasses.replace(base.train, optimizer="sgd", lr=2.5e-3, lr_next=2.5e-4, epochs=100,
                                  epochs_next=100, batch_size=24, head_lr_mult=10.0, weight_decay=1e-4),
        eval=dataclasses.replace(base.eval, future_classes="ignore", selection="seen", average="all"),
        dkd=DKDConfig(pos_weight_step0=35.0, pos_weight=35.0, memory_size=300, warmup=0.2),
    )


def _voc_dkd_m() -> Config:
    """DKD-M on VOC: ``voc-dkd`` with the 100-image class-balanced memory (METHOD.md §3.6)."""
    return _voc_dkd("dkd-m")


def _ade_dkd_m() -> Config:
    """DKD-M on ADE20K: ``ade-dkd`` with the 300-image memory."""
    return _ade_dkd("dkd-m")


def _voc_mib() -> Config:
    """MiB on VOC (Cermelli et al. 2020): SGD lr 0.01 / 0.001, 30 epochs, batch 24, the same lr for
    the head, KD weight 10, background init; full-image evaluation with future classes ignored."""
    base = _voc()
    return dataclasses.replace(
        base, method="mib",
        train=dataclasses.replace(base.train, lr=0.01, lr_next=0.001, epochs=30, epochs_next=30,
                                  batch_size=24, head_lr_mult=1.0),
        eval=dataclasses.replace(base.eval, mode="full", future_classes="ignore"),
        mib=MiBConfig(w_kd=10.0, init_bg=True),
    )


def _voc_wilson() -> Config:
    """WILSON on VOC 15-5 (METHOD.md §4.2-§4.4, ``run.sh``): step 0 pixel BCE, lr 0.01, 30 epochs, head
    at the same lr; later steps image labels only, lr 1e-3, head and localizer 10x, 40 epochs, alpha 0.5, the
    warm-up lr policy; batch 24; all val images, future classes -> bg."""
    base = _voc()
    return dataclasses.replace(
        base, method="wilson",
        train=dataclasses.replace(base.train, lr=0.01, lr_next=0.001, epochs=30, epochs_next=40,
                                  batch_size=24, head_lr_mult=10.0),
        eval=dataclasses.replace(base.eval, future_classes="bg", selection="all", average="present"),
        wilson=WILSONConfig(alpha=0.5, pseudo_epoch=5, localizer_lr_mult=10.0, flat_lr_step0=True),
    )


def _coco_voc_wilson() -> Config:
    """WILSON on COCO-to-VOC (``coco.sh``): as ``voc-wilson`` with alpha 0.9, 30 epochs at both steps
    (the paper text says 40, the script 30), output stride 8 as WILSON's WRN-38 (here ResNet-101)."""
    base, voc = _coco_voc(), _voc_wilson()
    return dataclasses.replace(
        voc, data=base.data,
        model=dataclasses.replace(voc.model, output_stride=8),
        train=dataclasses.replace(voc.train, epochs=30, epochs_next=30),
        wilson=dataclasses.replace(voc.wilson, alpha=0.9),
    )


def _voc_fmwiss() -> Config:
    """FMWISS on VOC 15-5 (METHOD.md §5.6): step 0 as WILSON's (pixel BCE, lr 0.01, 30 epochs); later
    steps image labels only, SGD lr 1e-3, momentum 0.9, weight decay 1e-4, 40 epochs, batch 24, the
    teacher warmed up alone for 5 epochs; lambda 0.1, alpha 0.5, beta 0.9, N 9, union, top-K 70%;
    CLIP ViT-B-16 ``openai`` and DINO ``vit_base_patch16_224.dino``; evaluated as WILSON."""
    base = _voc_wilson()
    return dataclasses.replace(
        base, method="fmwiss",
        train=dataclasses.replace(base.train, epochs=30, epochs_next=40, batch_size=24, lr=0.01, lr_next=1e-3,
                                  weight_decay=1e-4),
        foundation=FoundationConfig(), pseudo=PseudoConfig(), fmwiss=FMWISSConfig(warmup_epochs=5),
    )


def _coco_voc_fmwiss() -> Config:
    """FMWISS on COCO-to-VOC: ``voc-fmwiss`` on the COCO-to-VOC data (WRN-38 replaced by ResNet-101)."""
    base, voc = _coco_voc(), _voc_fmwiss()
    return dataclasses.replace(voc, data=base.data, model=dataclasses.replace(voc.model, output_stride=8))


PRESETS = {"synthetic": _synthetic, "voc": _voc, "ade": _ade, "coco-voc": _coco_voc}
# Paper settings of each method: one preset name away (the preset sets ``method``).
PRESETS.update({
    "voc-dkd": _voc_dkd, "voc-dkd-m": _voc_dkd_m, "ade-dkd": _ade_dkd, "ade-dkd-m": _ade_dkd_m,
    "voc-mib": _voc_mib, "voc-wilson": _voc_wilson, "coco-voc-wilson": _coco_voc_wilson,
    "voc-fmwiss": _voc_fmwiss, "coco-voc-fmwiss": _coco_voc_fmwiss,
})


def preset(name: str) -> Config:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}': choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()
