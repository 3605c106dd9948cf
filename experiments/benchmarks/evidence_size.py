"""Benchmark: bytes of cached foundation evidence per image, and the projected cache for a dataset
(issue "Performance", item 5).

Computes the evidence of a few random images through the real code path (``FoundationEvidence.ensure``
into a temporary cache: CLIP dense features + ViT last-block q/k, fp16, one verified file each) and
measures the files. Random-init weights: the sizes do not depend on the weights' values, so it runs
offline.

    python experiments/benchmarks/evidence_size.py                          # ViT-B/16 x2 at 448 px
    python experiments/benchmarks/evidence_size.py --resolution 224 --images 10582
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from wilss.config import FoundationConfig
from wilss.data.readers import ImageList
from wilss.foundation import FoundationEvidence
from wilss.foundation.cache import SUFFIX

VOC_TRAIN_AUG = 10582  # images of VOC 2012 + SBD train-aug (METHOD.md §1.1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clip-model", default="ViT-B-16")
    p.add_argument("--vit-model", default="vit_base_patch16_224")
    p.add_argument("--resolution", type=int, default=448)
    p.add_argument("--images", type=int, default=VOC_TRAIN_AUG, help="images to project the cache size for")
    p.add_argument("--sample", type=int, default=2, help="images actually computed")
    args = p.parse_args()
    cfg = FoundationConfig(clip_model=args.clip_model, clip_pretrained="", vit_model=args.vit_model,
                           vit_pretrained="", resolution=args.resolution, batch_size=args.sample)
    with tempfile.TemporaryDirectory(prefix="wilss-evidence-") as tmp:
        rng = np.random.default_rng(0)
        paths = []
        for i in range(args.sample):
            path = Path(tmp, "images", f"{i}.jpg")
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)).save(path)  # a VOC-sized image
            paths.append(path)
        images = ImageList(ids=tuple(p.stem for p in paths), images=tuple(paths), masks=tuple(paths),
                           sources=np.full(len(paths), "x"), source_luts={})
        ev = FoundationEvidence(cfg, Path(tmp, "cache"))
        ev.ensure(images, np.arange(len(paths)), progress=False)
        sizes: dict[str, int] = {}
        for f in Path(tmp, "cache", "evidence").rglob(f"*{SUFFIX}"):
            kind = f.relative_to(Path(tmp, "cache", "evidence")).parts[0].split("-")[0]
            sizes[kind] = sizes.get(kind, 0) + f.stat().st_size
        item = ev.load(images, 0)
    per_image = {k: v / args.sample for k, v in sizes.items()}
    total = sum(per_image.values())
    print(f"evidence at {args.resolution} px: CLIP {args.clip_model} dense features {tuple(item['clip'].shape)}, "
          f"ViT {args.vit_model} q and k {tuple(item['q'].shape)} each, fp16")
    for kind, size in sorted(per_image.items()):
        print(f"  {kind:<5} {size / 2**20:8.2f} MiB / image")
    print(f"  total {total / 2**20:8.2f} MiB / image")
    print(f"projected for {args.images} images: {total * args.images / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
