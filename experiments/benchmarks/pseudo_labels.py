"""Benchmark: online pseudo labels from cached evidence vs recomputing the foundation models, and as a
share of one student training iteration (issue "Performance", item 2; DESIGN.md "Performance").

Per training batch FMWISS needs pseudo masks for the batch's images. wilss computes the CLIP dense
features and the ViT's last-block q/k once per image (cached), then per iteration only samples seeds,
attends, binarises and fuses (``wilss.pseudo.pseudo_masks``). The naive way runs both foundation models
on the batch every iteration. Three timings per scale, measured side by side in this process:

  cached     pseudo_masks from in-memory evidence (what every iteration pays in wilss)
  recompute  CLIP dense features + ViT q/k forward passes, then the same pseudo_masks (the naive way)
  student    one student training iteration on the batch (forward, backward, optimiser step)

    python experiments/benchmarks/pseudo_labels.py                   # synthetic scale (tiny models, 64 px)
    python experiments/benchmarks/pseudo_labels.py --scale real      # ViT-B/16 x2 at 448 px, ResNet-101 at 512

Both scales use random-init weights (the cost does not depend on the weights' values), so it runs
offline. Printed ratios: recompute / cached (target >= 10x) and cached / student (target < 10%).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from dataclasses import dataclass

import torch

from wilss.config import FoundationConfig, ModelConfig, PseudoConfig
from wilss.foundation import ClipScorer, VitEvidence, tiny
from wilss.models import create_student
from wilss.pseudo import pseudo_masks


@dataclass(frozen=True)
class Scale:
    foundation: FoundationConfig
    model: ModelConfig
    batch: int
    crop: int
    classes: int  # new classes of the step (text embeddings)
    labels_per_image: int


SCALES = {
    "synthetic": Scale(FoundationConfig(clip_model=tiny.TINY_CLIP, clip_pretrained="", prompts="short",
                                        vit_model=tiny.TINY_VIT, vit_pretrained="", resolution=64),
                       ModelConfig(backbone="resnet-tiny", pretrained=""), batch=32, crop=64, classes=5,
                       labels_per_image=2),
    # FMWISS on VOC: CLIP ViT-B/16 and DINO ViT-B/16; evidence at 448 px; DeepLabV3 ResNet-101 at 512.
    "real": Scale(FoundationConfig(clip_pretrained="", vit_pretrained="", resolution=448),
                  ModelConfig(backbone="resnet101", pretrained=""), batch=2, crop=512, classes=5,
                  labels_per_image=2),
}


def timeit(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", choices=tuple(SCALES), default="synthetic")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    s = SCALES[args.scale]
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(s.batch, 3, s.foundation.resolution, s.foundation.resolution, generator=gen)
    valid = torch.zeros(s.batch, s.classes, dtype=torch.bool)
    valid[:, :s.labels_per_image] = True
    pcfg = PseudoConfig()

    clip, vit = ClipScorer(s.foundation), VitEvidence(s.foundation)
    text = torch.nn.functional.normalize(torch.randn(s.classes, clip.model.text_projection.shape[-1],
                                                     generator=gen), dim=-1)
    with torch.no_grad():
        feats = clip.dense_features(images)  # (B, d, h, w): what the cache holds, as fp16
        q, k, grid = vit.qk(images)  # (B, heads, T, dh)
    feats, q, k = feats.half(), q.half(), k.half()

    def cached():
        with torch.no_grad():
            pseudo_masks(feats.float(), text, q.float(), k.float(), valid, pcfg, gen, vit_grid=grid)

    def recompute():
        with torch.no_grad():
            f = clip.dense_features(images)
            qq, kk, g = vit.qk(images)
            pseudo_masks(f, text, qq, kk, valid, pcfg, gen, vit_grid=g)

    student = create_student(s.model, [1 + 15, s.classes]).train()
    opt = torch.optim.SGD(student.parameters(), lr=1e-3, momentum=0.9)
    x = torch.rand(s.batch, 3, s.crop, s.crop, generator=gen)
    y = torch.randint(0, 1 + 15 + s.classes, (s.batch, s.crop, s.crop), generator=gen)

    def train_iteration():
        loss = torch.nn.functional.cross_entropy(student(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t_cached = timeit(cached, args.repeats)
    t_recompute = timeit(recompute, args.repeats)
    t_student = timeit(train_iteration, max(1, args.repeats // 2 if args.scale == "real" else args.repeats))
    print(f"scale {args.scale}: batch {s.batch}, evidence at {s.foundation.resolution} px "
          f"({s.foundation.clip_model} + {s.foundation.vit_model}), student {s.model.backbone} at {s.crop} px")
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}")
    print(f"  cached pseudo labels     {1000 * t_cached:9.1f} ms / batch")
    print(f"  recompute + pseudo       {1000 * t_recompute:9.1f} ms / batch")
    print(f"  student train iteration  {1000 * t_student:9.1f} ms / batch")
    print(f"  recompute / cached       {t_recompute / t_cached:9.1f} x   (target >= 10x)")
    print(f"  cached / student         {100 * t_cached / t_student:9.2f} %   (target < 10%)")


if __name__ == "__main__":
    main()
