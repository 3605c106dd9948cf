"""Readers of the COCO-to-VOC and ADE20K layouts, the plain VOC layout, and the joint transforms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors

from wilss.config import DataConfig
from wilss.data.datasets import prepare
from wilss.data.transforms import MEAN, STD, eval_transform, train_transform


def _pair(image_dir: Path, mask_dir: Path, name: str, classes: list[int], size: int = 8) -> None:
    image_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((size, size), np.uint8)
    for j, c in enumerate(classes):
        mask[j] = c
    Image.fromarray(mask, mode="L").save(mask_dir / f"{name}.png")
    Image.fromarray(np.zeros((size, size, 3), np.uint8)).save(image_dir / f"{name}.jpg")


def test_coco_to_voc_pools_both_sources(tmp_path):
    coco = tmp_path / "coco"
    _pair(coco / "images/train2017", coco / "annotations/train2017", "c0", [8])  # truck: step 0
    _pair(coco / "images/train2017", coco / "annotations/train2017", "c1", [8, 1])  # + person (VOC class)
    _pair(coco / "images/val2017", coco / "annotations/val2017", "v0", [8, 1])
    voc = tmp_path / "voc"
    for name, cls in [("a", [15]), ("b", [8])]:  # VOC person (15 -> COCO 1), VOC cat (8 -> COCO 17)
        _pair(voc / "JPEGImages", voc / "SegmentationClassAug", name, cls)
    (voc / "train_aug.txt").write_text("a\nb\n")
    (voc / "val.txt").write_text("a\n")
    data = prepare(DataConfig(dataset="coco-voc", root=str(tmp_path), task="coco-to-voc", overlap=False),
                   tmp_path / "cache", progress=False)
    ids = [[data.train.ids[i] for i in s] for s in data.train_splits]
    assert ids == [["c0"], ["a", "b"]]  # step 0: COCO without VOC classes; step 1: VOC images only
    assert data.present_train[data.train.ids.index("a"), 1]  # VOC person arrives as COCO person
    assert data.present_train[data.train.ids.index("b"), 17]
    assert list(data.val.ids) == ["v0"] and data.class_names[0] == "background"


def test_ade_layout(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    _pair(root / "images/training", root / "annotations/training", "t0", [5])
    _pair(root / "images/training", root / "annotations/training", "t1", [120])
    _pair(root / "images/validation", root / "annotations/validation", "v0", [5, 120])
    data = prepare(DataConfig(dataset="ade", root=str(tmp_path), task="100-50"), tmp_path / "c", progress=False)
    assert [len(s) for s in data.train_splits] == [1, 1] and data.class_names[:2] == ("other", "wall")


def test_plain_voc_layout(tmp_path):
    root = tmp_path / "VOC2012"
    for name, cls in [("x", [1]), ("y", [16])]:
        _pair(root / "JPEGImages", root / "SegmentationClass", name, cls)
    (root / "ImageSets/Segmentation").mkdir(parents=True)
    (root / "ImageSets/Segmentation/train.txt").write_text("x\ny\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("x\n")
    data = prepare(DataConfig(dataset="voc", root=str(root), task="15-5"), tmp_path / "c", progress=False)
    assert [[data.train.ids[i] for i in s] for s in data.train_splits] == [["x"], ["y"]]


def test_joint_transforms_keep_mask_aligned():
    torch.manual_seed(0)
    m = torch.randint(0, 5, (8, 8)).repeat_interleave(8, 0).repeat_interleave(8, 1).to(torch.uint8)  # (64, 64)
    image = tv_tensors.Image(m[None].repeat(3, 1, 1) * 50)
    for _ in range(10):
        img, mask = train_transform(32)(image, tv_tensors.Mask(m))
        assert img.shape == (3, 32, 32) and mask.shape == (32, 32) and img.dtype == torch.float32
        rec = ((img[0] * STD[0] + MEAN[0]) * 255 / 50).round()
        # away from label edges (where bilinear and nearest differ) the image must show the mask's label
        pad = torch.nn.functional.pad(mask[None, None].float(), (1, 1, 1, 1), mode="replicate")[0, 0]
        interior = torch.stack([pad[dy:dy + 32, dx:dx + 32] == mask for dy in range(3) for dx in range(3)]).all(0)
        assert (rec == mask)[interior].float().mean() > 0.95
        assert set(mask.unique().tolist()) <= set(range(5))  # nearest: no new label values
    img, mask = eval_transform("crop", 16)(tv_tensors.Image(image[:, :, :48]), tv_tensors.Mask(m[:, :48]))
    assert img.shape == (3, 16, 16) and mask.shape == (16, 16)
    img, mask = eval_transform("full", 16)(image, tv_tensors.Mask(m))
    assert mask.shape == (64, 64) and torch.equal(mask, m)
