"""FMWISS end to end: the method on a small synthetic benchmark, copy-paste memory, crop sampling,
evidence reuse across knob changes, and the real-architecture pseudo-label path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wilss.config import FoundationConfig, PseudoConfig, override
from wilss.data.copypaste import CopyPasteMemory
from wilss.methods.fmwiss import sample_into_crop
from wilss.presets import preset
from wilss.protocol import run_protocol

FAST = {"data.crop_size": 32, "eval.size": 32, "train.epochs": 1, "train.epochs_next": 2,
        "train.batch_size": 16, "data.task": "10-5", "method": "fmwiss", "fmwiss.warmup_epochs": 1,
        "fmwiss.memory_per_class": 3,
        # the tiny foundation architectures at random init: the method's mechanics, not the weights
        "foundation.clip_model": "wilss-tiny-clip", "foundation.clip_pretrained": "",
        "foundation.vit_model": "wilss_tiny_vit", "foundation.vit_pretrained": "", "foundation.resolution": 64,
        "foundation.prompts": "short"}


def small_cfg(root, cache, **extra):
    return override(preset("synthetic"), {**FAST, "data.root": str(root), "data.cache_dir": str(cache), **extra})


def test_fmwiss_runs_resumes_and_reuses_evidence(small_synthetic, tmp_path):
    cache = tmp_path / "cache"
    logs = []
    rows = run_protocol(small_cfg(small_synthetic, cache), tmp_path / "a", progress=False, log=logs.append)
    first = rows[1]
    assert first["cache.evidence_misses"] == first["n_train_images"] and first["cache.evidence_hits"] == 0
    for key in ("loss.teacher_bce", "loss.dcl", "loss.seg", "pseudo.miou_init", "pseudo.miou_seeds",
                "pseudo.miou_fused", "pseudo.miou_ones", "pseudo.miou_random", "memory.instances", "time.pseudo_s"):
        assert key in first and np.isfinite(first[key]), key
    assert 0 <= first["pseudo.miou_fused"] <= 1
    # step 0 archived instances; the last step adds none (no later step would paste them)
    assert rows[0]["memory.instances"] > 0 and first["memory.instances"] == rows[0]["memory.instances"]
    # every epoch logs every loss term, and the teacher's p_c on / off the true pixels of each new class
    assert any("teacher_bce" in m and "dcl" in m for m in logs)
    probes = [m for m in logs if "teacher p_c on / off" in m]
    assert len(probes) == FAST["train.epochs_next"] and all("house " in m and "lightning " in m for m in probes)
    assert 0 < first["teacher.p_on"] < 1 and 0 < first["teacher.p_off"] < 1

    # another run that changes only pseudo-label and loss knobs computes no evidence
    knobs = {"pseudo.n_seeds": 3, "pseudo.topk": 0.5, "pseudo.fusion": "intersection", "fmwiss.alpha": 0.2,
             "fmwiss.beta": 0.5, "fmwiss.lambda_dcl": 0.0}
    again = run_protocol(small_cfg(small_synthetic, cache, **knobs), tmp_path / "b", progress=False, log=print)
    assert again[1]["cache.evidence_misses"] == 0
    assert again[1]["cache.evidence_hits"] == again[1]["n_train_images"]

    # resume: finished steps load, including the step-0 memory bank
    logs.clear()
    resumed = run_protocol(small_cfg(small_synthetic, cache), tmp_path / "a", progress=False, log=logs.append)
    assert sum("already done" in m for m in logs) == 2
    assert resumed[1]["miou_all"] == first["miou_all"]


def test_ground_truth_pseudo_masks_need_no_foundation_model(small_synthetic, tmp_path, monkeypatch):
    """pseudo.source=ground_truth (the upper-bound diagnostic): the teacher learns from the true masks
    of the new classes; no foundation model is built, no evidence computed, no pseudo quality."""
    import wilss.foundation

    def no_foundation(*a, **k):
        raise AssertionError("the ground-truth diagnostic built a foundation model")

    monkeypatch.setattr(wilss.foundation, "FoundationEvidence", no_foundation)
    cfg = small_cfg(small_synthetic, tmp_path / "cache", **{"pseudo.source": "ground_truth",
                                                           "foundation.clip_pretrained": "/no/such/clip.pt"})
    seen = []
    from wilss.losses import fmwiss as losses

    teacher_bce = losses.teacher_bce
    monkeypatch.setattr(losses, "teacher_bce", lambda lg, tg, ch, **kw: seen.append(tg) or teacher_bce(lg, tg, ch, **kw))
    rows = run_protocol(cfg, tmp_path / "run", progress=False, log=lambda m: None)
    step1 = rows[1]
    assert step1["pseudo.source"] == "ground_truth" and "cache.evidence_misses" not in step1
    assert "pseudo.miou_init" not in step1 and np.isfinite(step1["loss.teacher_bce"])
    # the teacher's targets are one-hot true masks: some pixels of new classes, every pixel one channel
    targets = torch.cat(seen)  # (N, 1 + n_new, H, W) over bg + new classes
    assert targets[:, 1:].sum() > 0 and bool(((targets.sum(1) == 1) | (targets.sum(1) == 0)).all())


@pytest.mark.parametrize("component", ["fmwiss.teacher", "fmwiss.dcl", "fmwiss.copy_paste"])
def test_components_switch_off(small_synthetic, tmp_path, component):
    cfg = small_cfg(small_synthetic, tmp_path / "cache", **{component: False, "train.epochs_next": 1,
                                                              "fmwiss.warmup_epochs": 0})
    rows = run_protocol(cfg, tmp_path / "run", progress=False, log=lambda m: None)
    step1 = rows[1]
    if component == "fmwiss.teacher":
        assert "loss.teacher_bce" not in step1 and "loss.seg" in step1
    if component == "fmwiss.dcl":
        assert "loss.dcl" not in step1 and "loss.teacher_bce" in step1
    if component == "fmwiss.copy_paste":
        assert "loss.old" not in step1


def test_memory_collect_paste_and_state():
    mem = CopyPasteMemory(per_class=2)
    image = torch.zeros(3, 3, 16, 16)
    image[0, :, 2:6, 3:8] = 1.0
    lab = torch.zeros(3, 16, 16, dtype=torch.long)
    lab[0, 2:6, 3:8] = 4
    lab[1, 0:3, 0:3] = 4
    lab[2, 5:9, 5:9] = 4
    mem.collect(image, lab, [4, 5])
    assert mem.classes == [4] and len(mem) == 2  # full at 2; class 5 absent
    patch, mask = mem.banks[4][0]
    assert patch.shape == (3, 4, 5) and mask.all() and torch.all(patch == 1)
    g = torch.Generator().manual_seed(0)
    out, pasted = mem.paste(torch.full((2, 3, 16, 16), -1.0), 1.0, (1.0, 1.0), g)
    assert set(pasted.unique().tolist()) == {0, 4}
    for b in range(2):
        inside = pasted[b] == 4
        assert inside.sum() in (9, 20)  # one of the two archived instances, at scale 1
        assert torch.all(out[b][:, ~inside] == -1)
    same = CopyPasteMemory.from_state(mem.state())
    g2 = torch.Generator().manual_seed(0)
    out2, pasted2 = same.paste(torch.full((2, 3, 16, 16), -1.0), 1.0, (1.0, 1.0), g2)
    assert torch.equal(pasted, pasted2) and torch.equal(out, out2)
    assert torch.equal(mem.paste(out, 0.0, (1.0, 1.0), g)[1], torch.zeros_like(pasted))


def test_sample_into_crop_follows_coords():
    from wilss.data.dataset import pixel_coords

    maps = torch.arange(16).view(1, 4, 4)
    coords = pixel_coords(8, 8).permute(1, 2, 0)[None]  # identity at twice the resolution
    up = sample_into_crop(maps, coords)
    assert torch.equal(up, maps.repeat_interleave(2, 1).repeat_interleave(2, 2))
    flipped = coords.clone()
    flipped[..., 0] = -flipped[..., 0]
    assert torch.equal(sample_into_crop(maps, flipped), up.flip(-1))


def test_real_architectures_run_the_pseudo_label_pipeline(tmp_path):
    """open_clip ViT-B-16 and timm vit_base_patch16_224 (random init, no download) through the same
    evidence and pseudo-label code as pretrained weights, on a 224-px image."""
    from PIL import Image

    from wilss.data.readers import ImageList
    from wilss.foundation import FoundationEvidence
    from wilss.pseudo import label_map, pseudo_masks

    rng = np.random.default_rng(0)
    paths = []
    for i in range(2):
        p = tmp_path / f"im{i}.png"
        Image.fromarray(rng.integers(0, 255, (240, 300, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    images = ImageList(ids=("a", "b"), images=tuple(paths), masks=tuple(paths), sources=np.array(["x", "x"]),
                       source_luts={})
    cfg = FoundationConfig(clip_model="ViT-B-16", clip_pretrained="", vit_model="vit_base_patch16_224",
                           vit_pretrained="", resolution=224, prompts="short", batch_size=2)
    ev = FoundationEvidence(cfg, tmp_path / "cache", torch.device("cpu"))
    stats = ev.ensure(images, np.arange(2), progress=False, log=lambda m: None)
    assert stats["misses"] == 2
    items = [ev.load(images, j) for j in range(2)]
    clip = torch.stack([it["clip"] for it in items]).float()
    q, k = torch.stack([it["q"] for it in items]), torch.stack([it["k"] for it in items])
    assert clip.shape == (2, 512, 14, 14) and q.shape == (2, 12, 196, 64) and k.shape == q.shape
    text = ev.text_embeddings(["dog", "horse"])
    assert text.shape == (2, 512)
    valid = torch.tensor([[True, False], [True, True]])
    pm = pseudo_masks(clip, text, q, k, valid, PseudoConfig(), torch.Generator().manual_seed(0))
    assert pm.fused.shape == (2, 2, 14, 14) and pm.labels.shape == (2, 14, 14)
    assert not pm.fused[0, 1].any()  # a class not in the image labels gets no mask
    assert (pm.fused | pm.init == pm.fused).all()  # union contains M_init
    assert label_map(pm.fused, pm.scores, valid).max() <= 2
