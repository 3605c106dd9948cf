"""Pretrain the tiny foundation models of the synthetic default: a CLIP and a DINO ViT, no pixel labels.

Real FMWISS runs use OpenAI's CLIP ViT-B/16 and DINO's ViT-B/16, pretrained on other images with
captions (CLIP) or nothing (DINO). The synthetic default mirrors that on scenes drawn with a *different*
seed (``FOUNDATION_SEED``) from the benchmark:

- ``wilss-tiny-clip-fcn`` (shipped) is trained contrastively (symmetric InfoNCE, learned temperature) on
  view / caption pairs: a view is the whole scene, a random crop or a patch of background, and its caption
  names the objects in view by class name ("a photo of a circle and a star."), sometimes only some of
  them, as web captions do; captions naming the same set are positives of each other. Its vision tower
  is a plain conv net whose locations see 29 px of the 64-px image, average-pooled then projected: the
  image embedding is the mean of per-location embeddings, each about its own neighbourhood;
- ``wilss_tiny_vit`` is trained by DINO self-distillation (``wilss.foundation.dino``) from a mimetic
  initialisation (``wilss.foundation.mimetic``), which is what makes minutes of CPU enough for its
  attention to group an object's patches: no labels at all.

Both are written in fp16 to ``wilss/foundation/weights/`` (``clip_tiny_synthetic.pt`` 7.3 MB, most of it
the text tower's token table; ``vit_tiny_synthetic.pt`` 1.7 MB) and loaded through the ordinary
local-file path by the config value ``synthetic``. The run ends with the sanity metrics of
``wilss.foundation.quality`` on benchmark val scenes, next to those of random-init models.

    OMP_NUM_THREADS=1 python -m wilss.foundation.pretrain_synthetic   # ~18 minutes, 1 thread

The shipped CLIP weights come from ``--clip fcn --only clip`` (1500 steps; 21 min with another training
job on the other core of the 2-core machine), the ViT's from ``--only vit``. On the format-3 world
(docs/fmwiss-synthetic.md has the measurements and the commands):

- the FCN CLIP's M_init inside an FMWISS run is 37.8 mIoU with a background prompt in the softmax
  (``foundation.score_norm=softmax_bg``, the synthetic preset's) and 23.8 with min-max maps, against 12.0
  for an all-ones mask and 17.4 for a random half of the pixels; it names 33% of the classes of a val
  image at image level (chance 10%);
- the ViT CLIP (``--clip vit``, the tiny CLIP shipped before) stays at chance whatever the scoring: it
  names 13% of an image's classes at image level, M_init 22.0 (min-max) / 20.6 (with the prompt);
- the LiT CLIP on the locked ``resnet-tiny`` trunk (``--clip lit-rn``, Zhai et al. 2022) recognises
  classes (79% at image level, 71% of object pixels take the right class among all 15) but does not
  localise them (M_init 23.5 / 21.9): its dilated trunk lets every location see the whole image, so every
  location names the image's classes. That is why the shipped tower has a bounded receptive field.

    OMP_NUM_THREADS=1 python -m wilss.foundation.pretrain_synthetic --clip lit-rn --only clip --out /tmp/lit

``--minutes M`` scales both step counts to take about M minutes on that reference machine; the step
counts (not the clock) define the run, so a run is reproducible from its arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import open_clip
import timm
import torch
import torch.nn.functional as F
from torch import nn

from wilss.atomic import atomic_path
from wilss.config import FoundationConfig
from wilss.data import synthetic
from wilss.foundation import quality, tiny
from wilss.foundation.clip import ClipScorer
from wilss.foundation.dino import cosine, train_dino
from wilss.foundation.mimetic import mimetic_init_
from wilss.foundation.vit import VitEvidence
from wilss.models.student import TINY_WEIGHTS, load_backbone_file

FOUNDATION_SEED = 2_000_003  # not the benchmark's (0..), nor the tiny backbone's (1_000_003)
CAPTIONS = ("a photo of {}.", "a picture of {}.", "an image of {}.", "a drawing of {}.", "{}.")
BACKGROUND = "the background"  # what a caption names when no object is in view
DEFAULT_MINUTES = 18.0  # --clip fcn and the DINO ViT
DINO_STEPS = 450  # at batch 32: about 4 minutes on the reference machine
# --clip: the architecture, its steps at batch 64 and its peak learning rate. fcn (shipped): about 12
# minutes alone on the reference machine; vit: about 8; lit-rn: about 3.3 (its locked trunk needs no
# backward pass).
CLIPS = {"fcn": (tiny.TINY_CLIP_FCN, 1500, 2e-3), "vit": (tiny.TINY_CLIP, 500, 1e-3),
         "lit-rn": (tiny.TINY_CLIP_RN, 1000, 1e-3)}
NAMED_SHARE = 0.04  # an object is named when it covers this share of the view (and >= 4 pixels)


def make_scenes(n: int, size: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """(n, 3, size, size) uint8 images and (n, size, size) uint8 masks (only used to write captions)."""
    pairs = [synthetic.render_scene(np.random.default_rng([seed, i]), size) for i in range(n)]
    images = torch.from_numpy(np.stack([p[0] for p in pairs])).permute(0, 3, 1, 2).contiguous()
    return images, np.stack([p[1] for p in pairs])


def named_classes(mask: np.ndarray) -> list[str]:
    """Class names of the objects a caption of this view mentions."""
    counts = np.bincount(mask.ravel(), minlength=256)
    least = max(4.0, NAMED_SHARE * mask.size)
    return [synthetic.CLASSES[c] for c in range(1, len(synthetic.CLASSES)) if counts[c] >= least]


def caption(names: list[str], rng: np.random.Generator) -> tuple[str, frozenset]:
    """A caption naming all (p = 0.5) or some of ``names`` in random order, and the set it names."""
    if not names:
        return str(rng.choice(CAPTIONS)).format(BACKGROUND), frozenset()
    named = list(names)
    if len(named) > 1 and rng.random() < 0.5:
        named = list(rng.choice(named, size=rng.integers(1, len(named)), replace=False))
    named = [str(n) for n in rng.permutation(named)]
    phrase = [f"a {n}" for n in named]
    text = phrase[0] if len(phrase) == 1 else ", ".join(phrase[:-1]) + " and " + phrase[-1]
    return str(rng.choice(CAPTIONS)).format(text), frozenset(named)


def view(image: torch.Tensor, mask: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, np.ndarray]:
    """The whole scene (p = 0.4), a random square crop (p = 0.4) or a patch of background (p = 0.2).

    image: (3, S, S) uint8 -> (3, S, S) float in [0, 1] (crops resized back to S), and the view's mask.
    Crops give captions about one or two objects and background views teach what "no object" looks like.
    """
    size, u = image.shape[-1], rng.random()
    if u < 0.4:
        return image.float() / 255, mask
    for _ in range(20 if u >= 0.8 else 1):
        side = int(rng.integers(size // 5, size // 2)) if u >= 0.8 else int(rng.integers(size // 4, size))
        y, x = rng.integers(0, size - side + 1, 2)
        window = mask[y:y + side, x:x + side]
        if u < 0.8 or not ((window > 0) & (window < synthetic.VOID)).any():
            break
    crop = image[None, :, y:y + side, x:x + side].float() / 255
    return F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)[0], window


def train_clip(model: nn.Module, tokenizer: Callable, images: torch.Tensor, masks: np.ndarray, *, steps: int,
               batch_size: int = 64, lr: float = 1e-3, seed: int = 0, locked: nn.Module | None = None,
               log: Callable[[str], None] = print) -> nn.Module:
    """Contrastive view-caption training; captions naming the same class set are positives of each other.

    Only parameters with ``requires_grad`` are trained; ``locked`` (a frozen part, e.g. a LiT image
    trunk) stays in eval mode, so its batch-norm statistics are not updated either.
    """
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    pre = model.visual.preprocess_cfg
    mean, std = torch.tensor(pre["mean"]).view(1, 3, 1, 1), torch.tensor(pre["std"]).view(1, 3, 1, 1)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in params if p.ndim >= 2 and "embedding" not in n]
    other = [p for n, p in params if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": other, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98), eps=1e-6)
    warmup, start = max(1, steps // 10), time.perf_counter()
    model.train()
    if locked is not None:
        locked.eval()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * (step + 1) / warmup if step < warmup else cosine(step - warmup, steps - warmup, lr, lr / 50)
        views, texts, sets = [], [], []
        for i in rng.integers(0, len(images), batch_size):
            x, m = view(images[i], masks[i], rng)
            text, named = caption(named_classes(m), rng)
            views.append(x.flip(-1) if rng.random() < 0.5 else x)
            texts.append(text)
            sets.append(named)
        # No colour augmentation (CLIP's own recipe is crops and flips): colour is part of a class's look.
        x = (torch.stack(views) - mean) / std
        img = model.encode_image(x, normalize=True)  # (B, d)
        txt = model.encode_text(tokenizer(texts), normalize=True)  # (B, d)
        logits = model.logit_scale.exp() * img @ txt.T  # (B, B)
        same = torch.tensor([[a == b for b in sets] for a in sets], dtype=torch.float32)
        target = same / same.sum(1, keepdim=True)  # symmetric: rows and columns alike
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))
        if (step + 1) % max(1, steps // 20) == 0 or step + 1 == steps:
            log(f"clip step {step + 1}/{steps}  loss {loss.item():.4f}  scale {model.logit_scale.exp().item():.1f}  "
                f"{time.perf_counter() - start:.0f}s")
    return model.eval()


def lit_clip() -> nn.Module:
    """``wilss-tiny-clip-rn`` with its image trunk loaded from the shipped ``resnet-tiny`` weights and
    locked (LiT): no gradient, eval mode. The projection, text tower and temperature remain trainable."""
    torch.manual_seed(0)
    model = open_clip.create_model(tiny.TINY_CLIP_RN)
    trunk = model.visual.trunk.trunk  # the TinyResNet inside the timm wrapper
    load_backbone_file(trunk, str(TINY_WEIGHTS))
    trunk.eval().requires_grad_(False)
    return model


def save_fp16(model: nn.Module, path: Path) -> None:
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def weights_in(out: Path, shipped: Path) -> Path:
    """``out``'s copy of a weight file, or the shipped one when ``out`` lacks it (a scratch ``--only clip`` run)."""
    return out / shipped.name if (out / shipped.name).is_file() else shipped


def report(cfg: FoundationConfig, n_images: int, log: Callable[[str], None] = print) -> dict[str, float]:
    """The sanity metrics (``wilss.foundation.quality``) of ``cfg``'s models and of random-init ones."""
    images, masks = quality.val_scenes(n_images)
    names = synthetic.CLASSES
    rows = {"all-ones mask": quality.all_ones_miou(masks)}
    for label, c in (("trained", cfg), ("random init", dataclasses.replace(cfg, clip_pretrained="",
                                                                            vit_pretrained=""))):
        for dense in ("maskclip", "tokens"):
            for prompts in ("short", "imagenet"):
                scorer = ClipScorer(dataclasses.replace(c, dense=dense, prompts=prompts))
                rows[f"{label} CLIP M_init ({dense}, {prompts} prompts)"] = quality.clip_miou(scorer, images, masks,
                                                                                             names)
        rows[f"{label} ViT attention at a seed"] = quality.attention_miou(VitEvidence(c), images, masks)
    log(f"mIoU on {n_images} synthetic val scenes (benchmark seed 0):")
    for name, value in rows.items():
        log(f"  {name:<48} {100 * value:5.1f}")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(tiny.WEIGHTS_DIR), help="folder for the two weight files")
    p.add_argument("--minutes", type=float, default=DEFAULT_MINUTES,
                   help=f"scale the step counts to about this many minutes (default {DEFAULT_MINUTES})")
    p.add_argument("--scenes", type=int, default=8000, help="training scenes (shared by both models)")
    p.add_argument("--eval-images", type=int, default=100, help="val scenes for the sanity metrics")
    p.add_argument("--only", choices=("clip", "vit", "eval"), help="train one model, or only report metrics")
    p.add_argument("--clip", choices=tuple(CLIPS), default="fcn",
                   help=f"the CLIP to train: the shipped '{tiny.TINY_CLIP_FCN}' (fcn), or a tried one, the ViT "
                        f"'{tiny.TINY_CLIP}' (vit) or the LiT '{tiny.TINY_CLIP_RN}' (lit-rn): their weights file "
                        "has the shipped one's name, so give those a scratch --out")
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    if args.clip != "fcn" and out.resolve() == tiny.WEIGHTS_DIR.resolve():
        p.error(f"--clip {args.clip} writes and reads its CLIP weights in --out, and the default folder holds "
                "the shipped CLIP's: give a scratch --out")
    scale = args.minutes / DEFAULT_MINUTES
    clip_name, clip_steps, clip_lr = CLIPS[args.clip]
    clip_steps, dino_steps = max(1, round(clip_steps * scale)), max(1, round(DINO_STEPS * scale))
    start = time.perf_counter()
    if args.only != "eval":
        images, masks = make_scenes(args.scenes, 64, FOUNDATION_SEED)
        print(f"{args.scenes} scenes rendered in {time.perf_counter() - start:.0f}s")
    if args.only in (None, "clip"):
        tokenizer = open_clip.get_tokenizer(clip_name)
        if args.clip == "lit-rn":
            model = lit_clip()
            model = train_clip(model, tokenizer, images, masks, steps=clip_steps, lr=clip_lr,
                               locked=model.visual.trunk)
        else:
            torch.manual_seed(0)
            model = open_clip.create_model(clip_name)
            if args.clip == "vit":
                mimetic_init_(model.visual)
            model = train_clip(model, tokenizer, images, masks, steps=clip_steps, lr=clip_lr)
        save_fp16(model, out / tiny.CLIP_WEIGHTS.name)
    if args.only in (None, "vit"):
        torch.manual_seed(0)
        backbone = mimetic_init_(timm.create_model(tiny.TINY_VIT, dynamic_img_size=True))
        data = timm.data.resolve_data_config({}, model=backbone)
        mean, std = torch.tensor(data["mean"]).view(1, 3, 1, 1), torch.tensor(data["std"]).view(1, 3, 1, 1)
        backbone = train_dino(backbone, images, lambda x: (x - mean) / std, steps=dino_steps)
        save_fp16(backbone, out / tiny.VIT_WEIGHTS.name)
    for f in (tiny.CLIP_WEIGHTS.name, tiny.VIT_WEIGHTS.name):
        if (out / f).is_file():
            print(f"{out / f}: {(out / f).stat().st_size / 1e6:.1f} MB")
    print(f"training took {(time.perf_counter() - start) / 60:.1f} min")
    clip_file = weights_in(out, tiny.CLIP_WEIGHTS) if args.clip == "fcn" else out / tiny.CLIP_WEIGHTS.name
    cfg = FoundationConfig(clip_model=clip_name, clip_pretrained=str(clip_file),
                           vit_model=tiny.TINY_VIT, vit_pretrained=str(weights_in(out, tiny.VIT_WEIGHTS)),
                           resolution=64)
    report(cfg, args.eval_images)


if __name__ == "__main__":
    main()
