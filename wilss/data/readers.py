"""Readers: list a dataset split's images and masks on disk (no pixels are read here).

Layouts (METHOD.md §1.1, §1.7, §1.8):
- ``voc`` (and ``synthetic``), aug: ``train_aug.txt`` / ``val.txt`` (at the root, in ``splits/`` or in
  ``ImageSets/Segmentation/``) with lines ``/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png`` or
  bare ids; masks in ``SegmentationClassAug/``.
- ``voc``, plain VOC2012: ``ImageSets/Segmentation/{train,val}.txt`` (ids), masks in ``SegmentationClass/``.
- ``coco-voc``: ``coco/images/{train2017,val2017}/<id>.jpg`` with COCO-Stuff thing labels +1 in
  ``coco/annotations/{train2017,val2017}/<id>.png``, and a VOC tree (either layout) in ``voc/``, whose
  masks are mapped to COCO ids.
- ``ade``: ``images/{training,validation}/<id>.jpg`` and ``annotations/{training,validation}/<id>.png``
  (optionally inside ``ADEChallengeData2016/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wilss.data import classes
from wilss.errors import DataError


@dataclass(frozen=True)
class ImageList:
    """One split of a dataset: parallel tuples of ids, image paths, mask paths and sources."""

    ids: tuple[str, ...]
    images: tuple[Path, ...]
    masks: tuple[Path, ...]
    sources: np.ndarray  # (N,) str: which sub-dataset an image comes from ("voc", "coco", ...)
    # source -> (256,) uint8 map from the stored mask values to raw class ids (VOC masks in COCO ids).
    source_luts: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.ids)

    def raw_lut(self, i: int) -> np.ndarray | None:
        return self.source_luts.get(str(self.sources[i]))


def _concat(lists: list[ImageList]) -> ImageList:
    return ImageList(
        ids=sum((x.ids for x in lists), ()),
        images=sum((x.images for x in lists), ()),
        masks=sum((x.masks for x in lists), ()),
        sources=np.concatenate([x.sources for x in lists]),
        source_luts={k: v for x in lists for k, v in x.source_luts.items()},
    )


def _require_dir(path: Path, what: str, fix: str) -> None:
    if not path.is_dir():
        raise DataError(f"{what} not found: {path} does not exist or is not a folder; {fix}")


def _check_files(images: list[Path], masks: list[Path], listing: Path) -> None:
    """Every listed image needs its image file and its mask; name the first missing one."""
    for img, mask in zip(images, masks):
        if not img.is_file():
            raise DataError(f"image {img} listed in {listing} does not exist: restore it or remove its "
                            f"line from {listing.name}")
        if not mask.is_file():
            raise DataError(f"image {img.name} has no mask ({mask} is missing): add the mask or remove "
                            f"the image's line from {listing.name}")


# --------------------------------------------------------------------------------------------------
# Pascal VOC (and the synthetic benchmark, which is written in the VOC-aug layout)


def _find_list(root: Path, names: list[str]) -> Path | None:
    for name in names:
        for folder in (root, root / "splits", root / "ImageSets" / "Segmentation"):
            if (folder / name).is_file():
                return folder / name
    return None


def _voc_layout(root: Path, layout: str) -> str:
    if layout != "auto":
        return layout
    return "aug" if (root / "SegmentationClassAug").is_dir() else "plain"


def read_voc(root: str | Path, split: str, layout: str = "auto", source: str = "voc") -> ImageList:
    root = Path(root)
    _require_dir(root, "data root", "pass the folder holding JPEGImages/ with --data-root or "
                                    "--set data.root=DIR")
    layout = _voc_layout(root, layout)
    mask_dir = "SegmentationClassAug" if layout == "aug" else "SegmentationClass"
    _require_dir(root / mask_dir, f"mask folder {mask_dir}/ of the '{layout}' VOC layout",
                 "check data.root, or choose the other layout with --set data.layout=aug|plain")
    names = {"train": ["train_aug.txt"] if layout == "aug" else ["train.txt"], "val": ["val.txt"]}[split]
    listing = _find_list(root, names)
    if listing is None:
        raise DataError(f"no {' or '.join(names)} under {root} (looked in ./, splits/, "
                        f"ImageSets/Segmentation/): add the split list of the '{layout}' layout")
    ids, images, masks = [], [], []
    for line in listing.read_text().splitlines():
        parts = line.split()
        if not parts:
            continue
        if len(parts) == 2:  # "/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png"
            img, mask = root / parts[0].lstrip("/"), root / parts[1].lstrip("/")
            if layout == "plain" or split == "val" and not mask.is_file():
                mask = root / mask_dir / mask.name
        elif len(parts) == 1:  # a bare id
            img, mask = root / "JPEGImages" / f"{parts[0]}.jpg", root / mask_dir / f"{parts[0]}.png"
        else:
            raise DataError(f"{listing}: cannot read line {line!r}: expected '<image> <mask>' or an id")
        ids.append(img.stem)
        images.append(img)
        masks.append(mask)
    if not ids:
        raise DataError(f"{listing} lists no images: regenerate or restore the split list")
    _check_files(images, masks, listing)
    return ImageList(tuple(ids), tuple(images), tuple(masks), np.full(len(ids), source), {})


# --------------------------------------------------------------------------------------------------
# COCO-to-VOC


def read_coco_voc(root: str | Path, split: str, layout: str = "auto") -> ImageList:
    root = Path(root)
    folder = {"train": "train2017", "val": "val2017"}[split]
    coco = _read_flat(root / "coco" / "images" / folder, root / "coco" / "annotations" / folder, "coco")
    voc = read_voc(root / "voc", split, layout, source="voc")
    voc_lut = np.zeros(256, dtype=np.uint8)
    voc_lut[: len(classes.VOC_TO_COCO)] = classes.VOC_TO_COCO
    voc_lut[255] = 255
    voc = ImageList(voc.ids, voc.images, voc.masks, voc.sources, {"voc": voc_lut})
    # Training pools both (the task picks COCO for step 0 and VOC for step 1); tests use COCO val.
    return _concat([coco, voc]) if split == "train" else coco


def _read_flat(image_dir: Path, mask_dir: Path, source: str) -> ImageList:
    """Images and masks matched by file stem in two folders."""
    _require_dir(image_dir, "image folder", "check data.root against the documented layout")
    _require_dir(mask_dir, "annotation folder", "check data.root against the documented layout")
    masks = sorted(mask_dir.glob("*.png"))
    if not masks:
        raise DataError(f"no .png masks in {mask_dir}: check data.root against the documented layout")
    images = [image_dir / f"{m.stem}.jpg" for m in masks]
    for img in sorted(image_dir.glob("*.jpg")):
        if not (mask_dir / f"{img.stem}.png").is_file():
            raise DataError(f"image {img} has no mask in {mask_dir}: add {img.stem}.png or remove the image")
    _check_files(images, masks, mask_dir)
    return ImageList(tuple(m.stem for m in masks), tuple(images), tuple(masks),
                     np.full(len(masks), source), {})


# --------------------------------------------------------------------------------------------------
# ADE20K


def read_ade(root: str | Path, split: str, layout: str = "auto") -> ImageList:
    root = Path(root)
    if (root / "ADEChallengeData2016").is_dir():
        root = root / "ADEChallengeData2016"
    folder = {"train": "training", "val": "validation"}[split]
    return _read_flat(root / "images" / folder, root / "annotations" / folder, "ade")
