"""The whole protocol on a small synthetic benchmark: rows, resume, joint, the CLI table."""

from __future__ import annotations

import pandas as pd
import pytest

from wilss.cli import main
from wilss.config import override
from wilss.presets import preset
from wilss.protocol import run_protocol
from wilss.results import read_rows

FAST = {"data.crop_size": 32, "eval.size": 32, "train.epochs": 1, "train.epochs_next": 1,
        "train.batch_size": 16, "data.task": "10-5"}


def small_cfg(root, **extra):
    return override(preset("synthetic"), {**FAST, "data.root": str(root), **extra})


def test_finetune_rows_and_resume(small_synthetic, tmp_path):
    cfg = small_cfg(small_synthetic)
    logs = []
    rows = run_protocol(cfg, tmp_path / "run", progress=False, log=logs.append)
    assert [r["step"] for r in rows] == [0, 1]
    df = read_rows(tmp_path / "run" / "results")
    assert len(df) == 2 and df["schema_version"].eq(1).all()
    for col in ["sweep", "trial_id", "method", "dataset", "task", "overlap", "seed", "train.lr", "miou_all",
                "miou_old", "miou_new", "miou_old_nobg", "miou_all_nobg", "hiou", "iou.background",
                "iou.lightning", "future_bg.miou_all", "time.step_s", "git_sha", "version.torch", "device"]:
        assert col in df.columns, col
    # step 0 of 10-5 has no lightning channel (NaN); step 1 scores it
    assert pd.isna(df.loc[0, "iou.lightning"]) and not pd.isna(df.loc[1, "iou.lightning"])
    assert df.loc[1, "miou_all"] >= 0 and 0 <= df.loc[1, "miou_old"] <= 1
    # a rerun into the same folder trains nothing and returns the same rows
    logs.clear()
    again = run_protocol(cfg, tmp_path / "run", progress=False, log=logs.append)
    assert sum("already done" in m for m in logs) == 2
    assert [r["miou_all"] for r in again] == [r["miou_all"] for r in rows]


def test_joint_is_one_step_over_all_classes(small_synthetic, tmp_path):
    rows = run_protocol(small_cfg(small_synthetic, method="joint"), tmp_path / "j", progress=False,
                        log=lambda m: None)
    assert len(rows) == 1 and rows[0]["step"] == 1 and rows[0]["n_train_images"] == 120


@pytest.mark.parametrize("overlap", ["true", "false"])
def test_cli_run_prints_table(small_synthetic, tmp_path, capsys, overlap):
    args = ["run", "--out", str(tmp_path / "c"), "--quiet", "--set", f"data.root={small_synthetic}",
            "--set", f"data.overlap={overlap}"] + [a for k, v in FAST.items() for a in ("--set", f"{k}={v}")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "step    old old-bg    new    all   hIoU" in out and "results:" in out
    # the same folder with another config is refused, naming the fix
    assert main(args + ["--set", "train.lr=0.5"]) == 2
    assert "another config" in capsys.readouterr().err


def test_training_batches_do_not_depend_on_loader_workers(small_synthetic, _cache_dir):
    """``data.loader_workers`` is not part of a step's key, so it must not change what a step trains:
    the same shuffle and the same augmentations with the data read in this process or in two workers;
    new augmentations every epoch."""
    import torch

    from wilss.data.datasets import prepare
    from wilss.methods import StepContext, create_method
    from wilss.protocol import train_loader

    def batches(workers: int, epoch: int) -> list[dict]:
        cfg = small_cfg(small_synthetic, **{"data.loader_workers": workers, "train.batch_size": 32})
        data = prepare(cfg.data, _cache_dir, progress=False)
        ctx = StepContext(cfg, data.task, 0, None, None, torch.device("cpu"), data=data)
        loader = train_loader(create_method("finetune"), ctx)
        loader.dataset.set_epoch(epoch)
        torch.manual_seed(123 + workers)  # whatever else draws from the global generator
        return list(loader)

    inline, workers = batches(0, 0), batches(2, 0)
    assert len(inline) == len(workers) >= 2
    for a, b in zip(inline, workers):
        assert torch.equal(a["index"], b["index"])
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    again = batches(0, 1)
    assert not all(torch.equal(a["image"], b["image"]) for a, b in zip(inline, again))
