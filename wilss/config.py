"""Configuration: frozen dataclasses, one flat dotted name per knob, strict overrides.

A knob has one name everywhere: the field ``TrainConfig.lr`` is the override ``train.lr=0.01``, the
search-space key ``train.lr`` and the Parquet column ``train.lr``. Overrides are strict: an unknown key,
a value of the wrong type or a value out of range raises ``ConfigError`` naming the key and the fix.

Each field may carry ``choices`` or a ``[lo, hi]`` range in its metadata (see ``knob``); validation
reads them, so the rules sit next to the defaults they guard.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from dataclasses import dataclass, field
from typing import Any

from wilss.errors import ConfigError


def knob(default: Any, *, choices: tuple | None = None, lo: float | None = None, hi: float | None = None):
    """A dataclass field with validation metadata (choices, or an inclusive range)."""
    return field(default=default, metadata={"choices": choices, "lo": lo, "hi": hi})


@dataclass(frozen=True)
class DataConfig:
    dataset: str = knob("synthetic", choices=("synthetic", "voc", "coco-voc", "ade"))
    # "" means the synthetic benchmark in the cache folder, generated on first use.
    root: str = ""
    # Which files of a VOC tree to read: "aug" = train_aug.txt + SegmentationClassAug (VOC + SBD),
    # "plain" = ImageSets/Segmentation/train.txt + SegmentationClass, "auto" = aug when present.
    layout: str = knob("auto", choices=("auto", "aug", "plain"))
    task: str = "10-5"
    # MiB rule (METHOD.md §1.3): overlap keeps future classes in an image (as background),
    # disjoint drops images that hold any future class.
    overlap: bool = True
    # What void (255) pixels become in training labels (METHOD.md §1.5 / §7.1): "bg" (MiB, WILSON),
    # "negative" (DKD: a negative for every class; for softmax methods the same as bg), "ignore".
    void_policy: str = knob("bg", choices=("bg", "negative", "ignore"))
    crop_size: int = knob(64, lo=8, hi=4096)
    # RandomResizedCrop area range relative to the image (§1.6); > 1 falls back to a centre crop.
    scale_min: float = knob(0.5, lo=0.01, hi=10.0)
    scale_max: float = knob(2.0, lo=0.01, hi=10.0)
    loader_workers: int = knob(0, lo=0, hi=64)
    # Where per-image class sets, the synthetic benchmark and (later) foundation evidence are cached;
    # "" = next to the results (``<out>/cache``), or ~/.cache/wilss for commands without results.
    cache_dir: str = ""
    # Synthetic benchmark size (only read when dataset == "synthetic").
    synthetic_seed: int = knob(0, lo=0)
    synthetic_train: int = knob(1500, lo=10)
    synthetic_val: int = knob(300, lo=10)
    synthetic_size: int = knob(64, lo=16, hi=1024)


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = knob("resnet-tiny", choices=("resnet-tiny", "resnet18", "resnet50", "resnet101"))
    # "" = random init; "imagenet" = torchvision ImageNet weights (needs the hub or its cache);
    # "synthetic" = the shipped resnet-tiny weights; any other value is a local checkpoint file.
    pretrained: str = ""
    output_stride: int = knob(8, choices=(8, 16))
    aspp_channels: int = knob(64, lo=8, hi=2048)
    bn_momentum: float = knob(0.1, lo=0.0, hi=1.0)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = knob(12, lo=1)
    # Steps > 0 usually train with a smaller lr for their own number of epochs (DKD: 1e-3 then 1e-4).
    epochs_next: int = knob(8, lo=1)
    batch_size: int = knob(32, lo=1)
    # SGD (Nesterov) is what every paper uses; AdamW trains the from-scratch CPU student much faster.
    optimizer: str = knob("sgd", choices=("sgd", "adamw"))
    lr: float = knob(0.01, lo=0.0, hi=10.0)
    lr_next: float = knob(0.001, lo=0.0, hi=10.0)
    momentum: float = knob(0.9, lo=0.0, hi=1.0)
    nesterov: bool = True
    weight_decay: float = knob(1e-4, lo=0.0, hi=1.0)
    # ASPP and classifiers learn at lr * head_lr_mult (10 in DKD, MiB and WILSON).
    head_lr_mult: float = knob(10.0, lo=0.0, hi=1000.0)
    poly_power: float = knob(0.9, lo=0.0, hi=10.0)
    # AMP (bf16) only takes effect on CUDA; CPU training is always fp32.
    amp: bool = True
    device: str = knob("auto", choices=("auto", "cpu", "cuda"))
    seed: int = knob(0, lo=0)
    # Print a progress line every this many iterations (0 = once per epoch only).
    log_every: int = knob(0, lo=0)


@dataclass(frozen=True)
class EvalConfig:
    # "crop" = resize the shorter side to ``size`` then centre-crop (as the published tables, §1.6);
    # "full" = the whole image at its own resolution.
    mode: str = knob("crop", choices=("crop", "full"))
    size: int = knob(64, lo=8, hi=4096)
    batch_size: int = knob(64, lo=1)
    # Pixels of classes not yet seen at an intermediate step: "ignore" (MiB, DKD-ADE) or "bg"
    # (WILSON, DKD-VOC). The other convention is logged too, under the prefix ``future_<other>.``.
    future_classes: str = knob("ignore", choices=("ignore", "bg"))
    # Which val images test each step: "all" (WILSON) or "seen" (DKD: images holding a seen class).
    selection: str = knob("all", choices=("all", "seen"))
    # Class averaging of mIoU: "present" (WILSON: classes with gt pixels) or "all" (DKD: absent = 0).
    average: str = knob("present", choices=("present", "all"))


@dataclass(frozen=True)
class FoundationConfig:
    """The frozen foundation models behind FMWISS's pseudo masks (METHOD.md §5.1, §5.2, §5.6).

    A model is an open_clip / timm name; ``*_pretrained`` is a pretrained tag (``openai``, ``dino``), a
    local checkpoint file, ``synthetic`` (the tiny models shipped with wilss) or "" (random init).
    """

    clip_model: str = "ViT-B-16"
    clip_pretrained: str = "openai"
    # Prompt-template ensemble for the class-text embeddings: CLIP's 80 ImageNet templates or a short set.
    prompts: str = knob("imagenet", choices=("imagenet", "short"))
    # Dense CLIP features: the MaskCLIP value path of the last block (default) or plain patch tokens.
    dense: str = knob("maskclip", choices=("maskclip", "tokens"))
    # Per-class normalisation of M_init over an image: min-max (default), softmax over K(x) with CLIP's
    # logit scale, or "softmax_bg": softmax over K(x) and a background prompt (``prompts.BACKGROUND``), so a
    # pixel that matches "background" better than every labelled class scores low (as CLIP-ES does).
    score_norm: str = knob("minmax", choices=("minmax", "softmax", "softmax_bg"))
    vit_model: str = "vit_base_patch16_224"
    vit_pretrained: str = "dino"
    # Side of the square image both models see; evidence is cached per (model, weights, image, size).
    resolution: int = knob(224, lo=16, hi=2048)
    batch_size: int = knob(32, lo=1)


@dataclass(frozen=True)
class PseudoConfig:
    """Online pseudo masks from cached evidence (METHOD.md §5.2): seeds, attention, top-K, fusion."""

    n_seeds: int = knob(9, lo=1, hi=1024)
    # Share K kept by binarisation; ``topk_mode``: "mass" keeps the smallest set of locations holding
    # K of the map's mass (DINO), "fraction" the top K of locations, "relative" locations >= K * max.
    topk: float = knob(0.7, lo=0.0, hi=1.0)
    topk_mode: str = knob("mass", choices=("mass", "fraction", "relative"))
    fusion: str = knob("union", choices=("union", "intersection", "none"))
    # Where the pseudo masks come from: the foundation models (the method), or the true masks of the
    # step's new classes ("ground_truth": an upper-bound diagnostic that uses pixel labels, so not a
    # weakly supervised run; it isolates what the teacher and student do with perfect pseudo masks).
    source: str = knob("foundation", choices=("foundation", "ground_truth"))


@dataclass(frozen=True)
class FMWISSConfig:
    """FMWISS losses, teacher and copy-paste memory (METHOD.md §5.3-§5.6); paper defaults."""

    lambda_dcl: float = knob(0.1, lo=0.0, hi=100.0)
    alpha: float = knob(0.5, lo=0.0, hi=1.0)
    beta: float = knob(0.9, lo=0.0, hi=1.0)
    # Which model beta weighs in the old-class blend: "prev" (q_old = beta p_prev + (1-beta) p_T, the
    # default reading of §5.5) or "teacher" (the swap).
    beta_on: str = knob("prev", choices=("prev", "teacher"))
    # Student background target: min(p_prev_bg, q_bg) as WILSON (default) or the beta blend.
    background: str = knob("min", choices=("min", "blend"))
    tau: float = knob(0.1, lo=1e-4, hi=10.0)
    points_per_class: int = knob(10, lo=1, hi=100000)
    embed_dim: int = knob(64, lo=4, hi=4096)
    warmup_epochs: int = knob(5, lo=0)
    # BCE pos_weight of the new classes in the teacher's L_bce^T (1 = the paper's plain pixel BCE). Each
    # new class covers a small share of a batch's pixels, so the plain BCE is dominated by negatives;
    # DKD uses a positive weight for the same reason (METHOD.md §3.2). Presets say which value they use.
    teacher_pos_weight: float = knob(1.0, lo=0.0, hi=1000.0)
    memory_per_class: int = knob(50, lo=0, hi=100000)
    paste_prob: float = knob(0.5, lo=0.0, hi=1.0)
    paste_scale_min: float = knob(0.5, lo=0.05, hi=10.0)
    paste_scale_max: float = knob(1.5, lo=0.05, hi=10.0)
    pastes_per_image: int = knob(1, lo=1, hi=16)
    # Components on/off (the paper's component ablation): the plug-in teacher (off: the student
    # learns from the fused pseudo masks directly), the dense contrastive loss, copy-paste memory.
    teacher: bool = True
    dcl: bool = True
    copy_paste: bool = True


@dataclass(frozen=True)
class DKDConfig:
    """DKD loss weights and training rules (METHOD.md §3); VOC defaults."""

    w_mbce: float = knob(1.0, lo=0.0, hi=1000.0)
    w_kd: float = knob(5.0, lo=0.0, hi=1000.0)
    w_dkd_pos: float = knob(5.0, lo=0.0, hi=1000.0)
    w_dkd_neg: float = knob(5.0, lo=0.0, hi=1000.0)
    w_ac: float = knob(1.0, lo=0.0, hi=1000.0)
    # BCE pos_weight of new classes: step 0 and later steps (VOC 2 / 1, ADE 35 / 35, §7.10; pinned by
    # the DKD presets). The default 2 / 2 suits the synthetic default: with 1 at step 1 the five new
    # classes reach 9.7 mIoU there instead of 16.5, old classes unchanged.
    pos_weight_step0: float = knob(2.0, lo=0.0, hi=1000.0)
    pos_weight: float = knob(2.0, lo=0.0, hi=1000.0)
    # Initialise new classifiers from the auxiliary classifier (ACI, §3.3); off = Kaiming normal.
    aci: bool = True
    # Steps > 0: BN and dropout in eval mode, BN affine frozen, weight decay per §3.5.
    freeze_bn: bool = True
    # DKD-M: class-balanced memory, a total number of images (VOC 100, ADE 300).
    memory_size: int = knob(100, lo=0, hi=1000000)
    # Share of a step's iterations with a linear lr warm-up from 0.001x before the poly decay
    # (DKD's WarmupPolyLR: ADE 0.2; VOC 0 = plain poly).
    warmup: float = knob(0.0, lo=0.0, hi=1.0)


@dataclass(frozen=True)
class MiBConfig:
    """MiB (Cermelli et al., CVPR 2020): unbiased CE / KD, background-based init."""

    w_kd: float = knob(10.0, lo=0.0, hi=1000.0)
    init_bg: bool = True


@dataclass(frozen=True)
class WILSONConfig:
    """WILSON (METHOD.md §4.3) at steps > 0; step 0 trains with pixel BCE."""

    alpha: float = knob(0.5, lo=0.0, hi=1.0)
    # Epoch from which the self-supervised localizer loss and the student's segmentation loss start.
    # The paper's 5 (of 40 epochs) is pinned by the WILSON presets; the default 1 keeps that share of
    # the synthetic preset's 8 epochs (with AdamW, 5 epochs without l_SEG let the encoder drift away
    # from the frozen classifier and the old classes are lost).
    pseudo_epoch: int = knob(1, lo=0)
    w_seg: float = knob(1.0, lo=0.0, hi=1000.0)
    w_enc: float = knob(1.0, lo=0.0, hi=1000.0)
    w_loc: float = knob(1.0, lo=0.0, hi=1000.0)
    w_cls: float = knob(1.0, lo=0.0, hi=1000.0)
    w_sss: float = knob(1.0, lo=0.0, hi=1000.0)
    # Learning-rate multiplier of the localizer relative to train.lr_next (lr_pseudo 1e-2 vs 1e-3).
    localizer_lr_mult: float = knob(10.0, lo=0.0, hi=1000.0)
    pamr_iters: int = knob(10, lo=0, hi=100)
    # l_SEG at feature stride (the paper) or at full resolution (an ablation, §7.11).
    seg_resolution: str = knob("stride", choices=("stride", "full"))
    # lr policy: "warmup" = constant until pseudo_epoch, then poly on the global counter (the paper).
    lr_policy: str = knob("warmup", choices=("warmup", "poly"))
    # Step 0 trains the head (ASPP + classifiers) at train.lr too, not lr * train.head_lr_mult: WILSON
    # forces lr_head to 1 at step 0 (§4.4; on in the WILSON presets). Later steps always use the mult.
    flat_lr_step0: bool = False


@dataclass(frozen=True)
class Config:
    method: str = "finetune"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    foundation: FoundationConfig = field(default_factory=FoundationConfig)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    fmwiss: FMWISSConfig = field(default_factory=FMWISSConfig)
    dkd: DKDConfig = field(default_factory=DKDConfig)
    mib: MiBConfig = field(default_factory=MiBConfig)
    wilson: WILSONConfig = field(default_factory=WILSONConfig)


# --------------------------------------------------------------------------------------------------
# flat names


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """``Config`` -> ``{"method": ..., "data.task": ..., "train.lr": ...}`` (the Parquet columns)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out.update(flatten(value, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = value
    return out


def _field_of(cfg: Config, key: str) -> tuple[dataclasses.Field, type]:
    """The dataclass field behind a dotted key and its resolved type; ConfigError when unknown."""
    node: Any = cfg
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(node)}
        f = fields.get(part)
        if f is None:
            raise ConfigError(_unknown_key_message(cfg, key))
        hints = typing.get_type_hints(type(node))
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(getattr(node, part)):
                raise ConfigError(f"config key '{key}' is a section, not a value; set one of its keys, "
                                  f"e.g. '{key}.{dataclasses.fields(getattr(node, part))[0].name}=...'")
            return f, hints[part]
        node = getattr(node, part)
        if not dataclasses.is_dataclass(node):
            raise ConfigError(_unknown_key_message(cfg, key))
    raise AssertionError("unreachable")


def _unknown_key_message(cfg: Config, key: str) -> str:
    close = difflib.get_close_matches(key, list(flatten(cfg)), n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"unknown config key '{key}': {hint}list the keys with `wilss config`"


def parse_value(key: str, text: Any, typ: type) -> Any:
    """Convert an override (string from the command line, or a value from a search space) to ``typ``."""
    if typ is bool:
        if isinstance(text, bool):
            return text
        low = str(text).strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"config key '{key}' takes a boolean, got {text!r}: use true or false")
    if typ is int:
        if isinstance(text, bool) or (isinstance(text, float) and not text.is_integer()):
            raise ConfigError(f"config key '{key}' takes an integer, got {text!r}")
        try:
            return int(text) if not isinstance(text, str) else int(text.strip())
        except ValueError:
            raise ConfigError(f"config key '{key}' takes an integer, got {text!r}") from None
    if typ is float:
        if isinstance(text, bool):
            raise ConfigError(f"config key '{key}' takes a number, got {text!r}")
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"config key '{key}' takes a number, got {text!r}") from None
    if typ is str:
        return str(text)
    raise AssertionError(f"unsupported config type {typ} for {key}")


def _check(key: str, f: dataclasses.Field, value: Any) -> None:
    choices, lo, hi = f.metadata.get("choices"), f.metadata.get("lo"), f.metadata.get("hi")
    if choices is not None and value not in choices:
        raise ConfigError(f"config key '{key}' must be one of {', '.join(map(str, choices))}; got {value!r}")
    if lo is not None and value < lo:
        raise ConfigError(f"config key '{key}' must be >= {lo}; got {value!r}")
    if hi is not None and value > hi:
        raise ConfigError(f"config key '{key}' must be <= {hi}; got {value!r}")


def override(cfg: Config, updates: dict[str, Any]) -> Config:
    """Apply ``{"train.lr": "0.01", ...}`` strictly and return a new, validated config."""
    for key, raw in updates.items():
        f, typ = _field_of(cfg, key)
        value = parse_value(key, raw, typ)
        _check(key, f, value)
        cfg = _replace_path(cfg, key.split("."), value)
    validate(cfg)
    return cfg


def _replace_path(node: Any, parts: list[str], value: Any) -> Any:
    if len(parts) == 1:
        return dataclasses.replace(node, **{parts[0]: value})
    child = getattr(node, parts[0])
    return dataclasses.replace(node, **{parts[0]: _replace_path(child, parts[1:], value)})


def parse_assignments(items: list[str]) -> dict[str, str]:
    """``["train.lr=0.01", ...]`` (the ``--set`` arguments) -> ``{"train.lr": "0.01"}``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set takes key=value, got {item!r}: e.g. --set train.lr=0.01")
        out[key.strip()] = value.strip()
    return out


def validate(cfg: Config) -> None:
    """Check every field's rule and the cross-field rules; raise ConfigError naming the key."""
    for key, value in flatten(cfg).items():
        f, _ = _field_of(cfg, key)
        _check(key, f, value)
    if cfg.fmwiss.paste_scale_min > cfg.fmwiss.paste_scale_max:
        raise ConfigError(f"fmwiss.paste_scale_min ({cfg.fmwiss.paste_scale_min}) must not exceed "
                          f"fmwiss.paste_scale_max ({cfg.fmwiss.paste_scale_max})")
    # A warm-up as long as the step leaves the student untrained: no error would show it otherwise.
    if cfg.method == "fmwiss" and cfg.fmwiss.teacher and cfg.fmwiss.warmup_epochs >= cfg.train.epochs_next:
        raise ConfigError(f"fmwiss.warmup_epochs ({cfg.fmwiss.warmup_epochs}) must be below train.epochs_next "
                          f"({cfg.train.epochs_next}), or the student never trains: lower the warm-up "
                          f"(the paper warms up for 5 of 40 epochs) or raise train.epochs_next")
    if cfg.method == "wilson" and cfg.wilson.pseudo_epoch >= cfg.train.epochs_next:
        raise ConfigError(f"wilson.pseudo_epoch ({cfg.wilson.pseudo_epoch}) must be below train.epochs_next "
                          f"({cfg.train.epochs_next}), or the student never trains: lower it (the paper starts "
                          f"l_SEG at epoch 5 of 40) or raise train.epochs_next")
    if cfg.data.scale_min > cfg.data.scale_max:
        raise ConfigError(f"data.scale_min ({cfg.data.scale_min}) must not exceed data.scale_max "
                          f"({cfg.data.scale_max})")
    # Imported here: methods and tasks import config, not the other way round.
    from wilss.data.tasks import get_task
    from wilss.methods import METHODS

    if cfg.method not in METHODS:
        raise ConfigError(f"unknown method '{cfg.method}': choose one of {', '.join(sorted(METHODS))}")
    get_task(cfg.data.dataset, cfg.data.task)


def to_json(cfg: Config) -> str:
    return json.dumps(flatten(cfg), indent=1, sort_keys=True)
