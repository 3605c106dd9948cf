"""The torch dataset of one step: read an image and its mask, remap labels, transform both."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors

from wilss.data.readers import ImageList
from wilss.errors import DataError


class SegmentationDataset(torch.utils.data.Dataset):
    """Items are dicts: image (3, H, W) float, mask (H, W) int64 in task-order indices, index.

    ``lut`` (256,) uint8 maps raw class ids to the step's labels (``wilss.data.labels``); masks stored
    in another id space (VOC masks of COCO-to-VOC) go through their source's map first.
    ``labels`` (optional, (N, K) float) adds each image's image-level label vector, for weak methods.
    ``coords=True`` adds ``coords`` (H', W', 2): for every output pixel, where it came from in the
    original image, in ``grid_sample`` coordinates ([-1, 1], x then y). Evidence computed once on the
    whole image (foundation-model maps) is brought into the augmented crop with it.
    ``extras(j)`` (optional) adds per-image tensors (e.g. cached evidence) under their own keys.

    Random augmentations: after ``seed_augmentations(seed)`` each item's draws come from a generator
    seeded with (seed, epoch, image index), ``set_epoch`` telling the epoch; so a crop does not depend
    on the order of reading, on the loader's worker processes (``data.loader_workers``, a key that
    must not change what a step trains) or on anything else drawing from torch's global generator.
    Without it the transform draws from the global generator of the process that reads.
    """

    def __init__(self, images: ImageList, indices: np.ndarray, lut: np.ndarray, transform: Callable,
                 labels: np.ndarray | None = None, coords: bool = False,
                 extras: Callable[[int], dict] | None = None):
        self.images, self.indices, self.transform, self.labels = images, np.asarray(indices), transform, labels
        self.coords, self.extras = coords, extras
        self.luts = {source: lut[raw] for source, raw in images.source_luts.items()}
        self.lut = lut
        self.seed: int | None = None
        self.epoch = 0

    def seed_augmentations(self, seed: int) -> None:
        self.seed = seed

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        j = int(self.indices[i])
        try:
            with Image.open(self.images.images[j]) as im:
                image = np.array(im.convert("RGB"))  # (H, W, 3) uint8
            with Image.open(self.images.masks[j]) as im:
                raw = np.asarray(im)  # (H, W) uint8 class ids, 255 void
        except OSError as e:
            raise DataError(f"cannot read image or mask of '{self.images.ids[j]}' ({e}): replace the "
                            f"file") from None
        if raw.shape != image.shape[:2]:
            raise DataError(f"mask {self.images.masks[j]} is {raw.shape[1]}x{raw.shape[0]} but its image "
                            f"is {image.shape[1]}x{image.shape[0]}: the mask must match the image")
        lut = self.luts.get(str(self.images.sources[j]), self.lut)
        mask = lut[raw]  # a fresh (writable) array
        inputs = [tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1)), tv_tensors.Mask(torch.from_numpy(mask))]
        if self.coords:  # a Mask, so geometric ops resample it with nearest and Normalize skips it
            inputs.append(tv_tensors.Mask(pixel_coords(*image.shape[:2])))
        if self.seed is None:
            out = self.transform(*inputs)
        else:  # torchvision's v2 transforms draw from the global CPU generator: seed it for this item
            gen = torch.default_generator  # (not torch.manual_seed: it also seeds every accelerator, 60 us)
            state = gen.get_state()
            gen.manual_seed(int(np.random.SeedSequence([self.seed, self.epoch, j]).generate_state(1)[0]))
            try:
                out = self.transform(*inputs)
            finally:
                gen.set_state(state)
        item = {"image": out[0].as_subclass(torch.Tensor), "mask": out[1].as_subclass(torch.Tensor).long(),
                "index": j}
        if self.coords:
            item["coords"] = out[2].as_subclass(torch.Tensor).permute(1, 2, 0).contiguous()
        if self.labels is not None:
            item["labels"] = torch.from_numpy(self.labels[j]).float()
        if self.extras is not None:
            item.update(self.extras(j))
        return item


def pixel_coords(h: int, w: int) -> torch.Tensor:
    """(2, h, w) float32: x and y of every pixel centre in [-1, 1] (``align_corners=False`` convention)."""
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h * 2 - 1
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w * 2 - 1
    return torch.stack([xs.expand(h, w), ys[:, None].expand(h, w)])
