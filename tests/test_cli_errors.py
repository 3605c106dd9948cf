"""Bad input: a one-line error naming the problem and the fix, exit 2, no traceback, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wilss.cli import main

pytestmark = pytest.mark.faults


def make_voc(root: Path, images: list[list[int]], size: int = 8) -> Path:
    """A VOC-aug tree whose i-th train image holds the classes ``images[i]`` (val: the same images)."""
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClassAug").mkdir()
    lines = []
    for i, cls in enumerate(images):
        mask = np.zeros((size, size), np.uint8)
        for j, c in enumerate(cls):
            mask[j % size, :] = c
        Image.fromarray(mask, mode="L").save(root / "SegmentationClassAug" / f"im{i}.png")
        Image.fromarray(np.full((size, size, 3), 128, np.uint8)).save(root / "JPEGImages" / f"im{i}.jpg")
        lines.append(f"/JPEGImages/im{i}.jpg /SegmentationClassAug/im{i}.png")
    (root / "train_aug.txt").write_text("\n".join(lines) + "\n")
    (root / "val.txt").write_text("\n".join(lines) + "\n")
    return root


def run_cli(capsys, args: list[str]) -> tuple[int, str]:
    code = main(args)
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.fixture
def voc_root(tmp_path):
    return make_voc(tmp_path / "voc", [[1, 2], [3, 16], [17], [5, 20]])


def _cases(voc_root: Path, tmp_path: Path):
    no_mask = make_voc(tmp_path / "nomask", [[1], [16]])
    (no_mask / "SegmentationClassAug" / "im1.png").unlink()
    bad_values = make_voc(tmp_path / "badvalues", [[1], [16], [40]])
    corrupt = make_voc(tmp_path / "corrupt", [[1], [16]])
    (corrupt / "SegmentationClassAug" / "im0.png").write_bytes(b"not a png")
    empty = make_voc(tmp_path / "empty", [[1, 2], [3]])
    return [
        (["--set", "data.dataset=cityscapes"], "data.dataset"),
        (["--set", "data.task=15-6"], "unknown task '15-6'"),
        (["--set", "data.dataset=voc", "--data-root", str(tmp_path / "missing")], "does not exist"),
        (["--set", "data.dataset=voc", "--set", "data.task=15-5"], "needs its data root"),
        (["--set", "data.dataset=voc", "--set", "data.task=15-5", "--data-root", str(no_mask)], "has no mask"),
        (["--set", "data.dataset=voc", "--set", "data.task=15-5", "--data-root", str(bad_values)],
         "outside the class range"),
        (["--set", "data.dataset=voc", "--set", "data.task=15-5", "--data-root", str(corrupt)],
         "cannot read mask"),
        (["--set", "data.dataset=voc", "--set", "data.task=15-5", "--data-root", str(empty)],
         "has no training image"),
        (["--set", "train.lrr=0.1"], "unknown config key 'train.lrr'"),
        (["--set", "train.epochs=many"], "takes an integer"),
        (["--set", "train.lr"], "key=value"),
        (["--method", "magic"], "unknown method 'magic'"),
        (["--preset", "nope"], "unknown preset"),
    ]


def test_bad_input_gives_one_line_and_writes_nothing(capsys, tmp_path, voc_root):
    for extra, words in _cases(voc_root, tmp_path):
        out = tmp_path / "out"
        code, err = run_cli(capsys, ["run", "--out", str(out), "--quiet", *extra])
        assert code == 2, (extra, err)
        assert err.startswith("wilss: error: ") and words in err, (extra, err)
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        assert not out.exists(), extra


def test_splits_errors(capsys, tmp_path):
    code, err = run_cli(capsys, ["splits", "--dataset", "kitti", "--task", "15-5", "--quiet"])
    assert code == 2 and "'kitti'" in err and "voc" in err
    code, err = run_cli(capsys, ["splits", "--dataset", "voc", "--task", "15-5", "--quiet"])
    assert code == 2 and "--data-root" in err


def test_console_script_prints_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "wilss.cli", "run", "--out", str(tmp_path / "o"), "--set",
                           "train.epochs=-1"], capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["wilss: error: config key 'train.epochs' must be >= 1; got -1"]


def test_splits_prints_ids(capsys, voc_root, tmp_path):
    code = main(["splits", "--dataset", "voc", "--root", str(voc_root), "--task", "15-5", "--overlap",
                 "--cache-dir", str(tmp_path / "c"), "--quiet"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out == ["# step 0: classes [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15], 3 images",
                   "im0", "im1", "im3",
                   "# step 1: classes [16, 17, 18, 19, 20], 3 images", "im1", "im2", "im3"]
