"""Shared step artifacts: which config decides a step, reuse across runs, atomic publication."""

from __future__ import annotations

import pytest

from wilss.artifacts import StepStore, step_key
from wilss.config import override
from wilss.presets import preset
from wilss.protocol import run_protocol

FAST = {"data.crop_size": 32, "eval.size": 32, "train.epochs": 1, "train.epochs_next": 1,
        "train.batch_size": 16, "data.task": "10-5"}
FM = (("foundation", "pseudo", "fmwiss"), ("fmwiss.memory_per_class",))


def test_step0_key_ignores_incremental_knobs():
    base = preset("synthetic")  # the sections passed (FM) decide, not the method field
    for key, value in [("fmwiss.lambda_dcl", 0.5), ("fmwiss.alpha", 0.1), ("fmwiss.beta", 0.2),
                       ("pseudo.n_seeds", 3), ("pseudo.fusion", "none"), ("train.lr_next", 0.1),
                       ("train.epochs_next", 3), ("data.loader_workers", 2), ("dkd.w_kd", 1.0)]:
        other = override(base, {key: value})
        assert step_key(other, 0, *FM) == step_key(base, 0, *FM), key
        if not key.startswith(("data.loader", "dkd.")):
            assert step_key(other, 1, *FM) != step_key(base, 1, *FM), key
    for key, value in [("fmwiss.memory_per_class", 7), ("train.lr", 0.5), ("train.seed", 1),
                       ("data.overlap", False), ("data.task", "5-5"), ("model.backbone", "resnet18")]:
        assert step_key(override(base, {key: value}), 0, *FM) != step_key(base, 0, *FM), key


def test_publish_is_atomic(tmp_path):
    store = StepStore(tmp_path)
    with pytest.raises(RuntimeError), store.publish("k") as tmp:
        (tmp / "checkpoint.pt").write_bytes(b"half")
        raise RuntimeError("killed while building")
    assert store.get("k") is None and list(tmp_path.iterdir()) == []


def test_runs_share_step0_through_the_store(small_synthetic, tmp_path):
    store = tmp_path / "store"
    cfg = override(preset("synthetic"), {**FAST, "data.root": str(small_synthetic)})
    a = run_protocol(cfg, tmp_path / "a", store=store, progress=False, log=lambda m: None)
    logs = []
    b = run_protocol(override(cfg, {"train.lr_next": 1e-4}), tmp_path / "b", trial_id="b", store=store,
                     progress=False, log=logs.append)
    assert [r["cache.step_hit"] for r in a] == [False, False]
    assert [r["cache.step_hit"] for r in b] == [True, False]
    assert b[0]["miou_all"] == a[0]["miou_all"] and b[0]["trial_id"] == "b"
    assert b[0]["train.lr_next"] == 1e-4  # the row holds the run's own config
    assert any("reused the shared artifact" in m for m in logs)
    assert b[0]["cache.step_key"] == a[0]["cache.step_key"] != b[1]["cache.step_key"]


def test_atomic_writes_respect_the_umask(tmp_path):
    from wilss import atomic

    atomic.write_text(tmp_path / "f.txt", "x")  # not mkstemp's 0600
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o666 & ~atomic._UMASK
