"""MiB and WILSON loss terms and PAMR on tiny tensors with hand-computed values; zero distillation
gradients when the student equals the previous model."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from wilss.losses import mib as M
from wilss.losses import wilson as W
from wilss.models.pamr import PAMR

LN2, LN3 = math.log(2), math.log(3)


# --------------------------------------------------------------------------------------------------
# MiB


def test_unbiased_ce_by_hand():
    # channels: 0 bg, 1 old, 2 new; equal logits -> p = 1/3 each
    logits = torch.zeros(1, 3, 1, 4)
    target = torch.tensor([[[0, 1, 2, 255]]])
    # bg pixel: -ln(p0 + p1) = ln 3/2; old-labelled pixel counts as bg; new pixel: ln 3; void ignored
    expected = (2 * math.log(3 / 2) + LN3) / 3
    assert M.unbiased_ce(logits, target, n_old=2).item() == pytest.approx(expected)


def test_unbiased_ce_at_step0_is_cross_entropy():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 4, 3, 3), torch.randint(0, 4, (2, 3, 3))
    target[0, 0, 0] = 255
    expected = F.cross_entropy(logits, target, ignore_index=255)
    torch.testing.assert_close(M.unbiased_ce(logits, target, 1), expected)


def test_unbiased_kd_by_hand():
    logits = torch.zeros(1, 3, 1, 1)  # student: bg, old, new all equal -> p̂_bg = 2/3, p̂_old = 1/3
    old = torch.zeros(1, 2, 1, 1)  # teacher: q = (1/2, 1/2)
    expected = -(0.5 * math.log(2 / 3) + 0.5 * math.log(1 / 3)) / 2
    assert M.unbiased_kd(logits, old).item() == pytest.approx(expected)


def test_mib_init_by_hand():
    bg_w, bg_b = torch.tensor([1.0, -2.0]), torch.tensor(0.5)
    new_w, new_b = torch.zeros(3, 2, 1, 1), torch.zeros(3)
    M.init_from_background(bg_w, bg_b, new_w, new_b)
    assert torch.equal(new_w[:, :, 0, 0], torch.tensor([[1.0, -2.0]] * 3))
    assert new_b.tolist() == pytest.approx([0.5 - math.log(4)] * 3)
    assert bg_b.item() == pytest.approx(0.5 - math.log(4))


def test_mib_init_keeps_the_old_prediction_so_kd_has_zero_gradient():
    """After the background init, p̂_bg = p_bg + Σ p_new equals the old model's p_bg: unbiased KD of the
    new model against the unchanged old model is at its minimum."""
    from wilss.config import ModelConfig
    from wilss.models import create_student

    torch.manual_seed(0)
    model = create_student(ModelConfig(aspp_channels=16), [4]).eval()
    prev = copy.deepcopy(model)
    model.add_head(3)
    bg, new = model.heads[0], model.heads[-1]
    M.init_from_background(bg.weight.data[0], bg.bias.data[0], new.weight.data, new.bias.data)
    x = torch.randn(2, 3, 32, 32)
    logits = model(x)
    with torch.no_grad():
        old = prev(x)
    merged = torch.cat([torch.logsumexp(torch.cat([logits[:, :1], logits[:, 4:]], 1), 1, keepdim=True),
                        logits[:, 1:4]], 1).softmax(1)
    torch.testing.assert_close(merged, old.softmax(1), atol=1e-5, rtol=1e-5)
    M.unbiased_kd(logits, old).backward()
    grads = [p.grad.abs().max().item() for p in model.parameters() if p.grad is not None]
    assert max(grads) < 1e-5


# --------------------------------------------------------------------------------------------------
# WILSON


def test_pixel_bce_by_hand():
    logits = torch.zeros(1, 2, 1, 3)
    target = torch.tensor([[[0, 1, 255]]])
    # each valid pixel: 2 classes x ln2; the void pixel contributes 0; mean over 3 pixels
    assert W.pixel_bce(logits, target).item() == pytest.approx(4 / 3 * LN2)


def test_ngwp_scores_by_hand():
    z = torch.tensor([[[[LN3, 0.0]], [[0.0, 0.0]]]])  # (1, 2, 1, 2)
    # m0 = (3/4, 1/2), m1 = (1/4, 1/2)
    pooled0 = (0.75 * LN3) / (1 + 1.25)
    focal0 = (1 - 0.625) ** 3 * math.log(0.01 + 0.625)
    focal1 = (1 - 0.375) ** 3 * math.log(0.01 + 0.375)
    assert W.ngwp_scores(z).tolist() == [[pytest.approx(pooled0 + focal0), pytest.approx(focal1)]]


def test_classification_uses_new_classes_only():
    z = torch.tensor([[[[LN3, 0.0]], [[0.0, 0.0]]]])
    s1 = W.ngwp_scores(z)[0, 1].item()
    labels = torch.tensor([[0.0, 1.0]])  # channel 0 old (never labelled), channel 1 new and present
    assert W.classification(z, labels, n_old=1).item() == pytest.approx(math.log(1 + math.exp(-s1)))


def test_localization_prior_and_encoder_distillation():
    z = torch.tensor([[[[LN3]], [[5.0]]]])  # (1, 2, 1, 1): only channel 0 (n_old = 1) is compared
    omega = torch.full((1, 1, 1, 1), 0.5)
    assert W.localization_prior(z, omega).item() == pytest.approx(0.5 * (math.log(4 / 3) + math.log(4)))
    assert W.encoder_distillation(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0])).item() == 5.0


def test_loc_and_enc_zero_gradient_when_equal_to_previous_model():
    torch.manual_seed(0)
    old_logits = torch.randn(2, 3, 4, 4)
    z = torch.cat([old_logits, torch.randn(2, 2, 4, 4)], 1).requires_grad_()
    W.localization_prior(z, torch.sigmoid(old_logits)).backward()
    assert z.grad.abs().max() < 1e-7
    e = torch.randn(2, 8, 4, 4, requires_grad=True)
    W.encoder_distillation(e, e.detach()).backward()
    assert not e.grad.any()


def test_pseudo_gt_thresholds_and_ambiguity():
    # 2 classes over 4 pixels; bg peak 1.0 (threshold 0.7), fg peak 0.5 (threshold max(0.3, 0.2) = 0.3)
    masks = torch.tensor([[[[1.0, 0.8, 0.6, 0.1]], [[0.0, 0.5, 0.4, 0.25]]]])
    gt = W.pseudo_gt(masks)
    # pixel 0: bg only; pixel 1: both -> dropped; pixel 2: fg only (0.6 < 0.7); pixel 3: none
    assert gt[0, :, 0].T.tolist() == [[1, 0], [0, 0], [0, 1], [0, 0]]
    low = torch.tensor([[[[0.1, 0.15]], [[0.1, 0.3]]]])  # peaks below the 0.2 floor
    assert W.pseudo_gt(low)[0, :, 0].T.tolist() == [[0, 0], [0, 1]]


def test_self_supervised_by_hand():
    # one image, 3 pixels: pseudo-GT bg, bg, class 1; labels name class 1 -> 2 classes = 1 label + bg
    gt = torch.tensor([[[[1.0, 1.0, 0.0]], [[0.0, 0.0, 1.0]]]])
    z = torch.zeros(1, 2, 1, 3)  # CE = ln 2 everywhere
    labels = torch.tensor([[0.0, 1.0]])
    # |I| = 3; w_bg = (3-2)/4, w_1 = (3-1)/4; per-image mean of w * ln2
    expected = (0.25 + 0.25 + 0.5) * LN2 / 3
    assert W.self_supervised(z, gt, labels).item() == pytest.approx(expected)
    # a pseudo-GT missing the labelled class drops the image
    assert W.self_supervised(z, torch.cat([gt[:, :1], torch.zeros_like(gt[:, 1:])], 1), labels).item() == 0


def test_student_targets_by_hand():
    m = torch.tensor([[[[0.6]], [[0.0]], [[0.4]]]])  # bg, old (zeroed), new
    omega = torch.tensor([[[[0.9]], [[0.3]]]])  # previous model: bg, old
    q = W.student_targets(m, omega, alpha=0.5)
    # q = 0.5 * hard + 0.5 * m = (0.8, 0, 0.2); bg = min(0.9, 0.8); old from ω; new from q
    assert q.flatten().tolist() == pytest.approx([0.8, 0.3, 0.2])


def test_image_weights_and_segmentation():
    q = torch.zeros(2, 3, 1, 2)
    q[0, 2, 0, 0] = 1.0  # image 0 has mass for the new class 2, image 1 has none
    labels = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    w = W.image_weights(q, labels, n_old=2)
    assert w.tolist() == [1.0, 0.0]
    logits = torch.zeros(2, 3, 1, 2)
    # image 0: Σ_c BCE(0, q) = 3 ln2 per pixel; weighted mean over images with weights (1, 0)
    assert W.segmentation(logits, q, w).item() == pytest.approx(3 * LN2 / (1 + 1e-5))


def test_warmup_then_poly():
    from wilss.methods.wilson import warmup_then_poly

    f = warmup_then_poly(100, 0.9, 50)
    assert f(0) == f(49) == 1.0
    assert f(50) == pytest.approx(0.5 ** 0.9)  # poly on the global counter: a step down at 50


# --------------------------------------------------------------------------------------------------
# PAMR


def test_pamr_keeps_constant_masks_and_probability():
    torch.manual_seed(0)
    image = torch.rand(1, 3, 12, 12)
    const = torch.full((1, 2, 12, 12), 0.5)
    torch.testing.assert_close(PAMR(5)(image, const), const)
    masks = torch.softmax(torch.randn(1, 3, 12, 12), 1)
    torch.testing.assert_close(PAMR(5)(image, masks).sum(1), torch.ones(1, 12, 12))


def test_pamr_follows_image_edges():
    image = torch.zeros(1, 3, 8, 8)
    image[..., 4:] = 1.0  # left half black, right half white
    image += 0.01 * torch.rand_like(image)
    mask = torch.zeros(1, 2, 8, 8)
    mask[:, 0, :, :4] = 1.0  # class 0 on the left
    mask[:, 1, :, 4:] = 1.0  # class 1 on the right ...
    mask[:, :, 3, 6] = torch.tensor([1.0, 0.0])  # ... except one wrong pixel inside the right half
    out = PAMR(10, (1, 2))(image, mask)
    assert out[0, 1, 3, 6] > 0.9  # corrected by its same-colour neighbours
    assert out[0, 0, :, :4].min() > 0.9  # nothing leaks across the edge
