"""DKD, DKD-M, MiB and WILSON as methods: initialisation of new classifiers, BN freezing, parameter
groups, the DKD-M memory, WILSON's weak step without pixel labels, and two steps of each end to end."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from wilss.config import override
from wilss.data.tasks import Task, get_task
from wilss.methods import StepContext, create_method
from wilss.methods.dkd import build_memory, is_bn
from wilss.presets import preset
from wilss.protocol import run_protocol

SMALL = {"model.aspp_channels": 16, "model.pretrained": ""}


def make_ctx(method_name: str, step: int = 1, **overrides) -> tuple:
    """A (method, ctx) pair at ``step`` of synthetic 10-5 with a tiny student; prev = the step-0 model."""
    cfg = override(preset("synthetic"), {"method": method_name, **SMALL, **overrides})
    task = get_task("synthetic", "10-5")
    method = create_method(method_name)
    torch.manual_seed(0)
    model = method.create_model(cfg, [11])
    prev = None
    if step > 0:
        prev = copy.deepcopy(model).eval().requires_grad_(False)
        model.add_head(5)
    ctx = StepContext(cfg, task, step, model, prev, torch.device("cpu"))
    return method, ctx


# --------------------------------------------------------------------------------------------------
# DKD


def test_dkd_aci_copies_the_aux_classifier_into_every_new_row():
    method, ctx = make_ctx("dkd")
    aux, new = ctx.model.heads[0], ctx.model.heads[-1]
    method.begin_step(ctx)
    assert torch.equal(new.weight, aux.weight.expand(5, -1, -1, -1))
    assert torch.equal(new.bias, aux.bias.expand(5))
    method, ctx = make_ctx("dkd", **{"dkd.aci": False})
    method.begin_step(ctx)
    new, aux = ctx.model.heads[-1], ctx.model.heads[0]
    assert not torch.equal(new.weight[0], aux.weight[0]) and not new.bias.any()


def test_dkd_freezes_bn_and_dropout_after_step_0():
    for step, frozen in [(0, False), (1, True)]:
        method, ctx = make_ctx("dkd", step=step)
        ctx.model.train()
        method.begin_epoch(ctx)
        mods = [m for m in ctx.model.modules() if is_bn(m) or isinstance(m, nn.Dropout)]
        assert mods and all(m.training != frozen for m in mods)


def test_dkd_param_groups_follow_section_3_5():
    method, ctx = make_ctx("dkd", step=0)
    wd, mult = ctx.cfg.train.weight_decay, ctx.cfg.train.head_lr_mult
    groups = method.param_groups(ctx, 0.1)
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in groups] == [
        ("backbone", 0.1, wd), ("head", pytest.approx(0.1 * mult), wd)]
    assert sum(len(g["params"]) for g in groups) == len(list(ctx.model.parameters()))

    method, ctx = make_ctx("dkd", step=1)
    groups = method.param_groups(ctx, 0.1)
    assert [(g["name"], g["weight_decay"]) for g in groups] == [
        ("backbone", 0.0), ("aspp", 0.0), ("old_classifiers", 0.0), ("new_classifier", wd)]
    assert [g["lr"] for g in groups] == [0.1] + [pytest.approx(0.1 * mult)] * 3
    ids = [id(p) for g in groups for p in g["params"]]
    bn = {id(p) for m in ctx.model.modules() if is_bn(m) for p in m.parameters()}
    assert len(ids) == len(set(ids)) and not bn & set(ids)
    assert set(ids) | bn == {id(p) for p in ctx.model.parameters()}
    assert {id(p) for p in groups[3]["params"]} == {id(p) for p in ctx.model.heads[-1].parameters()}


def test_dkd_distillation_has_zero_gradient_when_student_equals_previous_model():
    method, ctx = make_ctx("dkd", step=1)
    method.begin_step(ctx)
    ctx.model.train()
    method.begin_epoch(ctx)  # frozen BN / dropout: the old part of the student computes what prev does
    batch = {"image": torch.randn(2, 3, 32, 32), "mask": torch.randint(0, 16, (2, 32, 32))}
    terms = method.losses(ctx, batch)
    assert set(terms) == {"loss", "mbce", "ac", "kd", "dkd_pos", "dkd_neg"}
    (terms["kd"] + terms["dkd_pos"] + terms["dkd_neg"]).backward()
    assert max(p.grad.abs().max().item() for p in ctx.model.parameters() if p.grad is not None) < 1e-5


def test_dkd_predicts_background_by_threshold():
    method, _ = make_ctx("dkd", step=0)
    logits = torch.tensor([-5.0, -1.0, 2.0, -3.0]).view(1, 4, 1, 1)  # [aux, c1, c2, c3]
    assert method.predict(logits).item() == 2
    assert method.predict(-logits.abs()).item() == 0


def _fake_memory_ctx(step: int, budget: int) -> StepContext:
    task = Task("synthetic", "t", ((1, 2), (3,), (4,)))
    present = np.zeros((20, 5), dtype=bool)
    present[:10, 1] = True  # images 0-9: class 1
    present[10:12, 2] = True  # images 10-11: class 2
    present[12:16, 3] = True  # images 12-15: class 3
    present[16:20, 4] = True
    data = SimpleNamespace(train=SimpleNamespace(ids=tuple(f"im{i}" for i in range(20))),
                           present_train=present,
                           train_splits=[np.arange(12), np.arange(12, 16), np.arange(16, 20)])
    cfg = override(preset("synthetic"), {"dkd.memory_size": budget})
    return StepContext(cfg, task, step, None, None, torch.device("cpu"), data=data)


def test_dkd_m_memory_is_class_balanced_round_robin():
    mem = build_memory(_fake_memory_ctx(1, 4), [])
    assert len(mem) == len(set(mem)) == 4
    # one image per old class per round: both class-2 images, two class-1 images
    assert {"im10", "im11"} <= set(mem)
    # step 2: candidates are step 1's images and the previous memory, one image per class of 1..3
    mem2 = build_memory(_fake_memory_ctx(2, 3), mem)
    ids = {int(i[2:]) for i in mem2}
    assert len(ids) == 3 and any(i < 10 for i in ids) and any(i in (10, 11) for i in ids)
    assert any(12 <= i < 16 for i in ids)
    assert len(build_memory(_fake_memory_ctx(1, 100), [])) == 12  # every candidate when the budget allows


def test_dkd_m_state_round_trip_and_train_indices():
    method = create_method("dkd-m")
    ctx = _fake_memory_ctx(1, 4)
    method.memory = build_memory(ctx, [])
    other = create_method("dkd-m")
    other.restore(method.state())
    assert other.memory == method.memory
    idx = other.train_indices(ctx)
    assert len(idx) == 4 + 4 and set(idx[:4]) == {12, 13, 14, 15}


# --------------------------------------------------------------------------------------------------
# MiB


def test_mib_background_init():
    method, ctx = make_ctx("mib", step=1)
    bg = ctx.model.heads[0]
    w0, b0 = bg.weight[0].clone(), bg.bias[0].item()
    method.begin_step(ctx)
    new = ctx.model.heads[-1]
    assert torch.equal(new.weight, w0.expand(5, -1, -1, -1))
    assert new.bias.tolist() == pytest.approx([b0 - math.log(6)] * 5)
    assert bg.bias[0].item() == pytest.approx(b0 - math.log(6))


# --------------------------------------------------------------------------------------------------
# WILSON


def test_wilson_weak_step_never_reads_pixel_labels():
    method, ctx = make_ctx("wilson", step=1)
    assert method.weak
    method.begin_step(ctx)
    groups = method.param_groups(ctx, 1e-3)
    assert groups[-1]["name"] == "localizer"
    assert groups[-1]["lr"] == pytest.approx(1e-3 * ctx.cfg.wilson.localizer_lr_mult)
    assert not any(k.startswith("localizer") for k in ctx.model.state_dict())
    labels = torch.zeros(2, 16)
    labels[0, 11] = labels[1, 14] = 1.0
    batch = {"image": torch.randn(2, 3, 32, 32), "labels": labels}  # no "mask"
    for epoch, expected in [(0, {"cls", "loc", "enc"}), (5, {"cls", "loc", "enc", "sss", "seg"})]:
        ctx.epoch = epoch
        terms = method.losses(ctx, batch)
        assert set(terms) == expected | {"loss"} and torch.isfinite(terms["loss"])
    terms["loss"].backward()
    assert all(p.grad is not None for p in method.localizer.parameters())


def test_wilson_step0_head_lr():
    method, ctx = make_ctx("wilson", step=0)
    head = pytest.approx(0.01 * ctx.cfg.train.head_lr_mult)
    assert [g["lr"] for g in method.param_groups(ctx, 0.01)] == [0.01, head]
    method, ctx = make_ctx("wilson", step=0, **{"wilson.flat_lr_step0": True})  # WILSON: lr_head 1
    assert [g["lr"] for g in method.param_groups(ctx, 0.01)] == [0.01, 0.01]


# --------------------------------------------------------------------------------------------------
# end to end


FAST = {"data.crop_size": 32, "eval.size": 32, "train.epochs": 1, "train.epochs_next": 1,
        "train.batch_size": 16, "data.task": "10-5"}


@pytest.mark.parametrize("name,extra", [("dkd", {}), ("dkd-m", {"dkd.memory_size": 10}), ("mib", {}),
                                        ("wilson", {"wilson.pseudo_epoch": 0})])
def test_two_steps_on_small_synthetic(small_synthetic, tmp_path, name, extra):
    cfg = override(preset("synthetic"), {**FAST, "data.root": str(small_synthetic), "method": name, **extra})
    rows = run_protocol(cfg, tmp_path / name, progress=False, log=lambda m: None)
    assert [r["step"] for r in rows] == [0, 1]
    assert all(0 <= r["miou_all"] <= 1 for r in rows)
    if name == "dkd-m":
        state = torch.load(tmp_path / name / "checkpoints" / "step-1.pt", weights_only=True)["extra"]
        assert len(state["memory_ids"]) == 10 and rows[1]["memory_size"] == 10
    if name == "wilson":
        assert {"loss.seg", "loss.sss", "loss.cls", "loss.loc", "loss.enc"} <= set(rows[1])


def test_paper_presets_are_one_name_away():
    expect = {"voc-dkd": ("dkd", 1e-3, 1e-4, 60, 32), "voc-dkd-m": ("dkd-m", 1e-3, 1e-4, 60, 32),
              "ade-dkd": ("dkd", 2.5e-3, 2.5e-4, 100, 24), "ade-dkd-m": ("dkd-m", 2.5e-3, 2.5e-4, 100, 24),
              "voc-mib": ("mib", 0.01, 0.001, 30, 24), "voc-wilson": ("wilson", 0.01, 0.001, 30, 24),
              "coco-voc-wilson": ("wilson", 0.01, 0.001, 30, 24), "voc-fmwiss": ("fmwiss", 0.01, 1e-3, 30, 24),
              "coco-voc-fmwiss": ("fmwiss", 0.01, 1e-3, 30, 24)}
    for name, (method, lr, lr_next, epochs, batch) in expect.items():
        cfg = override(preset(name), {})
        assert (cfg.method, cfg.train.lr, cfg.train.lr_next, cfg.train.epochs, cfg.train.batch_size) == (
            method, lr, lr_next, epochs, batch), name
    voc, ade = preset("voc-dkd"), preset("ade-dkd")
    assert (voc.dkd.pos_weight_step0, voc.dkd.pos_weight, voc.dkd.warmup) == (2.0, 1.0, 0.0)
    assert (ade.dkd.pos_weight_step0, ade.dkd.pos_weight, ade.dkd.warmup) == (35.0, 35.0, 0.2)
    assert (voc.eval.future_classes, voc.eval.selection, voc.eval.average) == ("bg", "seen", "all")
    assert voc.data.void_policy == "negative" and voc.model.output_stride == 16 and voc.model.bn_momentum == 0.01
    wil, coco = preset("voc-wilson"), preset("coco-voc-wilson")
    assert (wil.wilson.alpha, wil.wilson.pseudo_epoch, wil.train.epochs_next, wil.wilson.flat_lr_step0) == (
        0.5, 5, 40, True)
    assert coco.wilson.alpha == 0.9 and coco.data.dataset == "coco-voc"
    fm = preset("voc-fmwiss")  # METHOD.md §5.6: paper knobs, real foundation models, 40 epochs, 5 warm-up
    assert (fm.fmwiss.lambda_dcl, fm.fmwiss.alpha, fm.fmwiss.beta, fm.fmwiss.warmup_epochs) == (0.1, 0.5, 0.9, 5)
    assert (fm.pseudo.n_seeds, fm.pseudo.fusion, fm.pseudo.topk, fm.train.epochs_next) == (9, "union", 0.7, 40)
    assert (fm.foundation.clip_model, fm.foundation.clip_pretrained, fm.foundation.vit_pretrained) == (
        "ViT-B-16", "openai", "dino")
    assert preset("coco-voc-fmwiss").data.dataset == "coco-voc"
