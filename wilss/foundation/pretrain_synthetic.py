"""Pretrain the tiny foundation models of the synthetic default: a CLIP and a DINO ViT, no pixel labels.

Real FMWISS runs use OpenAI's CLIP ViT-B/16 and DINO's ViT-B/16, pretrained on other images with
captions (CLIP) or nothing (DINO). The synthetic default mirrors that on scenes drawn with a *different*
seed (``FOUNDATION_SEED``) from the benchmark:

- ``wilss-tiny-clip`` is trained contrastively (symmetric InfoNCE, learned temperature) on image /
  caption pairs, the caption naming the scene's objects by class name ("a photo of a circle and a
  star."), sometimes only some of them, as web captions do; captions naming the same set count as
  positives of each other;
- ``wilss_tiny_vit`` is trained by DINO self-distillation (``wilss.foundation.dino``): no labels at all.

Both are written in fp16 to ``wilss/foundation/weights/`` (``clip_tiny_synthetic.pt`` ~7.5 MB,
``vit_tiny_synthetic.pt`` ~1.6 MB) and loaded through the ordinary local-file path by the config value
``synthetic``. The run ends with the sanity metrics of ``wilss.foundation.quality`` on benchmark val
scenes, next to the same metrics for random-init models.

    OMP_NUM_THREADS=1 python -m wilss.foundation.pretrain_synthetic   # ~14 minutes, 1 thread, 2 shared cores

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
from wilss.foundation.dino import colour_jitter, cosine, train_dino
from wilss.foundation.vit import VitEvidence

FOUNDATION_SEED = 2_000_003  # not the benchmark's (0..), nor the tiny backbone's (1_000_003)
CAPTIONS = ("a photo of {}.", "a picture of {}.", "an image of {}.", "a drawing of {}.", "{}.")
DEFAULT_MINUTES = 14.0
CLIP_STEPS, DINO_STEPS = 700, 500  # at batch 128 / 32: about 6 and 6.5 minutes on the reference machine
MIN_PIXELS = 8  # an object smaller than this is not named in the caption


def make_scenes(n: int, size: int, seed: int) -> tuple[torch.Tensor, list[list[str]]]:
    """(n, 3, size, size) uint8 images and the class names present in each (>= MIN_PIXELS pixels)."""
    images, names = [], []
    for i in range(n):
        image, mask = synthetic.render_scene(np.random.default_rng([seed, i]), size)
        counts = np.bincount(mask.ravel(), minlength=256)
        images.append(torch.from_numpy(image).permute(2, 0, 1))
        names.append([synthetic.CLASSES[c] for c in range(1, len(synthetic.CLASSES)) if counts[c] >= MIN_PIXELS])
    return torch.stack(images), names


def caption(names: list[str], rng: np.random.Generator) -> tuple[str, frozenset]:
    """A caption naming all (p = 0.5) or some of ``names`` in random order, and the set it names."""
    if not names:
        return rng.choice(["a photo of shapes.", "a picture of a background."]), frozenset()
    named = list(names)
    if len(named) > 1 and rng.random() < 0.5:
        named = list(rng.choice(named, size=rng.integers(1, len(named)), replace=False))
    named = [str(n) for n in rng.permutation(named)]
    phrase = [f"a {n}" for n in named]
    text = phrase[0] if len(phrase) == 1 else ", ".join(phrase[:-1]) + " and " + phrase[-1]
    return str(rng.choice(CAPTIONS)).format(text), frozenset(named)


def train_clip(model: nn.Module, tokenizer: Callable, images: torch.Tensor, names: list[list[str]], *, steps: int,
               batch_size: int = 128, lr: float = 2e-3, seed: int = 0,
               log: Callable[[str], None] = print) -> nn.Module:
    """Contrastive image-caption training; captions naming the same class set are positives of each other."""
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    pre = model.visual.preprocess_cfg
    mean, std = torch.tensor(pre["mean"]).view(1, 3, 1, 1), torch.tensor(pre["std"]).view(1, 3, 1, 1)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98), eps=1e-6)
    warmup, start = max(1, steps // 20), time.perf_counter()
    model.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * (step + 1) / warmup if step < warmup else cosine(step - warmup, steps - warmup, lr, lr / 50)
        idx = torch.randint(len(images), (batch_size,), generator=gen)
        x = images[idx].float() / 255
        x = torch.where(torch.rand(batch_size, 1, 1, 1, generator=gen) < 0.5, x.flip(-1), x)
        x = (colour_jitter(x, gen) - mean) / std  # colour says nothing about the class here
        texts, sets = zip(*(caption(names[i], rng) for i in idx.tolist()))
        img = model.encode_image(x, normalize=True)  # (B, d)
        txt = model.encode_text(tokenizer(list(texts)), normalize=True)  # (B, d)
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


def save_fp16(model: nn.Module, path: Path) -> None:
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


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
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    scale = args.minutes / DEFAULT_MINUTES
    clip_steps, dino_steps = max(1, round(CLIP_STEPS * scale)), max(1, round(DINO_STEPS * scale))
    start = time.perf_counter()
    if args.only != "eval":
        images, names = make_scenes(args.scenes, 64, FOUNDATION_SEED)
        print(f"{args.scenes} scenes rendered in {time.perf_counter() - start:.0f}s")
    if args.only in (None, "clip"):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = open_clip.create_model(tiny.TINY_CLIP)
        model = train_clip(model, open_clip.get_tokenizer(tiny.TINY_CLIP), images, names, steps=clip_steps)
        save_fp16(model, out / tiny.CLIP_WEIGHTS.name)
    if args.only in (None, "vit"):
        torch.manual_seed(0)
        backbone = timm.create_model(tiny.TINY_VIT, dynamic_img_size=True)
        data = timm.data.resolve_data_config({}, model=backbone)
        mean, std = torch.tensor(data["mean"]).view(1, 3, 1, 1), torch.tensor(data["std"]).view(1, 3, 1, 1)
        backbone = train_dino(backbone, images, lambda x: (x - mean) / std, steps=dino_steps)
        save_fp16(backbone, out / tiny.VIT_WEIGHTS.name)
    for f in (tiny.CLIP_WEIGHTS.name, tiny.VIT_WEIGHTS.name):
        if (out / f).is_file():
            print(f"{out / f}: {(out / f).stat().st_size / 1e6:.1f} MB")
    print(f"training took {(time.perf_counter() - start) / 60:.1f} min")
    cfg = FoundationConfig(clip_model=tiny.TINY_CLIP, clip_pretrained=str(out / tiny.CLIP_WEIGHTS.name),
                           vit_model=tiny.TINY_VIT, vit_pretrained=str(out / tiny.VIT_WEIGHTS.name), resolution=64)
    report(cfg, args.eval_images)


if __name__ == "__main__":
    main()
