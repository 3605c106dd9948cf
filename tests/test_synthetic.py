"""The synthetic benchmark: VOC-aug layout, determinism, class mix, VOC-like statistics, appearance cues,
safe (re)generation."""

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wilss.data import synthetic
from wilss.errors import DataError

SMALL = {"n_train": 12, "n_val": 4, "size": 64, "progress": False}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return synthetic.generate(tmp_path_factory.mktemp("syn") / "ds", seed=0, n_train=200, n_val=20,
                              progress=False)


def _read_train(root: Path, column: int) -> list[np.ndarray]:
    """The train images (column 0) or masks (column 1), as listed in train_aug.txt."""
    lines = (root / "train_aug.txt").read_text().splitlines()
    return [np.array(Image.open(root / line.split()[column].lstrip("/"))) for line in lines]


def _masks(root: Path) -> list[np.ndarray]:
    return _read_train(root, 1)


def _images(root: Path) -> list[np.ndarray]:
    return _read_train(root, 0)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_class_list():
    assert synthetic.CLASSES[0] == "background"
    assert len(synthetic.CLASSES) == 16 and len(set(synthetic.CLASSES)) == 16
    assert all(re.fullmatch(r"[a-z]+", name) for name in synthetic.CLASSES)  # usable as "a photo of a {}"


def test_layout_and_list_format(dataset):
    assert (dataset / "classes.txt").read_text().splitlines() == list(synthetic.CLASSES)
    meta = json.loads((dataset / "meta.json").read_text())
    assert meta["format_version"] == synthetic.FORMAT_VERSION
    assert (meta["seed"], meta["n_train"], meta["n_val"], meta["size"]) == (0, 200, 20, 64)
    for list_name, split, n in (("train_aug.txt", "train", 200), ("val.txt", "val", 20)):
        lines = (dataset / list_name).read_text().splitlines()
        assert len(lines) == n
        for line in lines:
            m = re.fullmatch(rf"/JPEGImages/({split}_\d{{6}})\.jpg /SegmentationClassAug/\1\.png", line)
            assert m, line
            image = Image.open(dataset / "JPEGImages" / f"{m[1]}.jpg")
            mask = Image.open(dataset / "SegmentationClassAug" / f"{m[1]}.png")
            assert (image.mode, image.size) == ("RGB", (64, 64))
            assert (mask.mode, mask.size) == ("L", (64, 64))
            assert set(np.unique(np.array(mask)).tolist()) <= set(range(16)) | {255}
    assert not list(dataset.parent.glob(".*tmp*"))  # the temporary tree was renamed into place


def test_render_scene_is_pure_and_sized():
    for size in (16, 64, 96):
        a_img, a_mask = synthetic.render_scene(np.random.default_rng(7), size)
        b_img, b_mask = synthetic.render_scene(np.random.default_rng(7), size)
        assert a_img.shape == (size, size, 3) and a_mask.shape == (size, size)
        assert a_img.dtype == a_mask.dtype == np.uint8
        assert np.array_equal(a_img, b_img) and np.array_equal(a_mask, b_mask)


def test_deterministic_across_runs_and_workers(tmp_path):
    a = synthetic.generate(tmp_path / "a", seed=3, **SMALL)
    b = synthetic.generate(tmp_path / "b", seed=3, workers=2, **SMALL)
    c = synthetic.generate(tmp_path / "c", seed=4, **SMALL)
    assert _tree_bytes(a) == _tree_bytes(b)
    assert [np.array_equal(x, y) for x, y in zip(_masks(a), _masks(c))].count(True) == 0


def test_images_mix_classes_from_the_whole_range(dataset):
    sets = [set(np.unique(m).tolist()) - {0, 255} for m in _masks(dataset)]
    assert 0.25 < np.mean([len(s) >= 2 for s in sets]) < 0.5  # VOC: 36% of images hold 2+ classes
    assert set().union(*sets) == set(range(1, 16))
    only_low = np.mean([bool(s) and max(s) <= 10 for s in sets])
    mixed = np.mean([min(s, default=99) <= 10 < max(s, default=0) for s in sets])
    assert only_low > 0.3 and mixed > 0.05


def test_void_marks_every_label_boundary(dataset):
    for mask in _masks(dataset)[:50]:
        assert (mask == 255).any()
        # no two 8-adjacent non-void pixels carry different labels
        pairs = ((mask[:, :-1], mask[:, 1:]), (mask[:-1], mask[1:]), (mask[:-1, :-1], mask[1:, 1:]),
                 (mask[:-1, 1:], mask[1:, :-1]))
        for a, b in pairs:
            assert not ((a != b) & (a != 255) & (b != 255)).any()


def test_colour_is_informative_but_not_decisive(dataset):
    """Per (image, class) mean colours: a nearest-centroid rule beats chance (1/15) clearly, as colour
    tells VOC's classes apart in part, but stays far from decisive, so shape must do the rest."""
    colours, classes = [], []
    for image, mask in zip(_images(dataset), _masks(dataset)):
        for c in set(np.unique(mask).tolist()) - {0, 255}:
            if (mask == c).sum() >= 20:
                colours.append(image[mask == c].mean(0))
                classes.append(c)
    colours, classes = np.array(colours), np.array(classes)
    centroids = np.stack([colours[classes == c].mean(0) for c in range(1, 16)])
    nearest = np.linalg.norm(colours[:, None] - centroids[None], axis=2).argmin(1) + 1
    accuracy = (nearest == classes).mean()
    assert 0.2 < accuracy < 0.5, accuracy  # 0.34 on 400 scenes
    for c in range(1, 16):  # each class takes several colours
        assert colours[classes == c].std(0).mean() > 30, synthetic.CLASSES[c]
    # the class-colour table itself: no colour names one class with probability above 1/2
    probs = np.stack([synthetic.class_colour_probs(c) for c in range(1, 16)])  # (15, 12)
    assert np.allclose(probs.sum(1), 1)
    assert (probs / probs.sum(0)).max() < 0.5


def test_scene_statistics_are_vocs():
    """Objects per image and pixel shares near VOC's (the docstring's table): 1-3 classes per image,
    1.47 on average, each present class on 10-25% of the pixels, background about 70%, void a few %."""
    n_classes, shares, bg, void = [], [], [], []
    for i in range(300):
        _, mask = synthetic.render_scene(np.random.default_rng([0, 0, i]), 64)
        present = set(np.unique(mask).tolist()) - {0, 255}
        n_classes.append(len(present))
        shares += [(mask == c).mean() for c in present]
        bg.append((mask == 0).mean())
        void.append((mask == 255).mean())
    counts = np.bincount(n_classes, minlength=4) / len(n_classes)
    assert counts[0] == 0 and set(n_classes) <= {1, 2, 3}
    assert abs(counts[1] - 0.64) < 0.08 and 1.35 < np.mean(n_classes) < 1.6
    assert 0.12 < np.mean(shares) < 0.25
    assert 0.6 < np.mean(bg) < 0.78 and 0.03 < np.mean(void) < 0.1


def test_ensure_reuses_an_existing_tree(tmp_path, monkeypatch):
    root = synthetic.ensure(tmp_path / "ds", seed=1, **SMALL)
    stamp = {p: p.stat().st_mtime_ns for p in root.rglob("*")}

    def no_generate(*args, **kwargs):
        raise AssertionError("ensure() regenerated an existing tree")

    monkeypatch.setattr(synthetic, "generate", no_generate)
    assert synthetic.ensure(root, seed=1, **SMALL) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamp


def test_ensure_rejects_other_parameters(tmp_path):
    root = synthetic.generate(tmp_path / "ds", seed=1, **SMALL)
    with pytest.raises(ValueError, match=r"seed=1 \(requested 2\).*delete"):
        synthetic.ensure(root, seed=2, **SMALL)
    with pytest.raises(DataError, match="n_train"):  # also a WilssError: the CLI prints it as one line
        synthetic.ensure(root, **{**SMALL, "n_train": 13}, seed=1)


def test_a_tree_of_an_older_format_is_refused_with_the_fix(tmp_path):
    root = synthetic.generate(tmp_path / "ds", seed=1, **SMALL)
    meta = json.loads((root / "meta.json").read_text())
    (root / "meta.json").write_text(json.dumps({**meta, "format_version": synthetic.FORMAT_VERSION - 1}))
    with pytest.raises(DataError, match=rf"format {synthetic.FORMAT_VERSION - 1}.*delete .* to regenerate"):
        synthetic.ensure(root, seed=1, **SMALL)


def test_a_foreign_non_empty_root_is_refused(tmp_path):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "something.txt").write_text("x")
    with pytest.raises(DataError, match="ensure"):
        synthetic.generate(tmp_path / "ds", **SMALL)
    with pytest.raises(DataError, match="no meta.json"):
        synthetic.ensure(tmp_path / "ds", **SMALL)


def test_interrupted_generation_leaves_nothing_half_written(tmp_path):
    # a killed run of another process, and one of an earlier process that had our pid
    for pid in (123, os.getpid()):
        stale = tmp_path / f".ds.tmp-{pid}"
        (stale / "JPEGImages").mkdir(parents=True)
        (stale / "JPEGImages" / "train_000000.jpg").write_bytes(b"truncated")
    (tmp_path / "ds").mkdir()  # an empty placeholder, as left by a tool creating the folder first
    root = synthetic.ensure(tmp_path / "ds", seed=5, **SMALL)
    reference = synthetic.generate(tmp_path / "ref", seed=5, **SMALL)
    assert _tree_bytes(root) == _tree_bytes(reference)
    assert not (tmp_path / f".ds.tmp-{os.getpid()}").exists()


def test_losing_the_race_keeps_the_winners_tree(tmp_path, monkeypatch):
    real_rename = os.rename

    def rival_finishes_first(src, dst):
        shutil.copytree(src, dst)  # another process renamed its identical tree into place just before us
        real_rename(src, dst)  # -> OSError: destination not empty

    monkeypatch.setattr(synthetic.os, "rename", rival_finishes_first)
    root = synthetic.generate(tmp_path / "ds", seed=6, **SMALL)
    assert (root / "meta.json").exists() and len(list((root / "JPEGImages").iterdir())) == 16
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_default_root_names_the_parameters(tmp_path):
    root = synthetic.default_root(tmp_path, seed=2, n_train=100, n_val=30, size=32)
    assert root == tmp_path / "synthetic" / f"v{synthetic.FORMAT_VERSION}-seed2-n100-30-s32"
    assert synthetic.default_root(tmp_path) != root
