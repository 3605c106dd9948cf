"""DKD loss terms (METHOD.md §3.2) on tiny tensors with hand-computed values, the inference rule, and
zero distillation gradients when the student equals the previous model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wilss.config import DKDConfig
from wilss.losses import dkd as L

LN2, LN3, LN4 = math.log(2), math.log(3), math.log(4)


def test_decompose_by_hand():
    w = torch.tensor([[1.0, -2.0], [-1.0, 3.0]])  # (C=2, D=2)
    f = torch.tensor([2.0, 1.0]).view(1, 2, 1, 1)  # (B=1, D=2, 1, 1)
    pos, neg = L.decompose(w, f)
    assert pos.shape == neg.shape == (1, 2, 1, 1)
    assert pos.flatten().tolist() == [2.0, 3.0]  # 1*2 | 3*1
    assert neg.flatten().tolist() == [-2.0, -2.0]  # -2*1 | -1*2
    # a conv weight (C, D, 1, 1) gives the same
    pos4, neg4 = L.decompose(w[..., None, None], f)
    assert torch.equal(pos4, pos) and torch.equal(neg4, neg)


def test_decompose_sums_to_bias_free_logits():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 4, 1)
    f = torch.rand(2, 6, 3, 5)  # non-negative like post-ReLU features
    pos, neg = L.decompose(conv.weight, f)
    assert pos.shape == (2, 4, 3, 5)
    assert (pos >= 0).all() and (neg <= 0).all()
    torch.testing.assert_close(pos + neg, F.conv2d(f, conv.weight))
    with pytest.raises(ValueError, match="inputs"):
        L.decompose(conv.weight, torch.rand(1, 5, 2, 2))


def test_class_sum_is_per_class_mean_summed():
    bce = torch.tensor([[[[1.0, 3.0]], [[10.0, 30.0]]]])  # (1, 2, 1, 2)
    assert L.class_sum(bce).item() == pytest.approx(2.0 + 20.0)


def test_mbce_by_hand_void_is_negative():
    # 4 pixels, two new channels for labels 3 and 4; logits 0 -> BCE ln2 (x2 for positives, pos_weight 2)
    target = torch.tensor([[[3, 4, 0, 255]]])  # (1, 1, 4)
    logits = torch.zeros(1, 2, 1, 4)
    # each channel: one positive (2 ln2) + three negatives (ln2, void included), mean over 4 pixels
    assert L.mbce(logits, target, 3, 2.0).item() == pytest.approx(2 * 5 / 4 * LN2)
    # void ignored: mean over 3 pixels
    assert L.mbce(logits, target, 3, 2.0, ignore_void=True).item() == pytest.approx(2 * 4 / 3 * LN2)


def test_mbce_by_hand_nonzero_logits():
    target = torch.tensor([[[1, 0]]])  # (1, 1, 2): pixel 0 positive for channel 0
    logits = torch.full((1, 1, 1, 2), LN3)  # σ = 3/4
    # positive: -ln(3/4); negative: -ln(1/4); mean
    assert L.mbce(logits, target, 1, 1.0).item() == pytest.approx((math.log(4 / 3) + LN4) / 2)


def test_kd_by_hand_and_zero_gradient_at_teacher():
    z = torch.full((1, 2, 1, 1), LN3, requires_grad=True)  # σ = 3/4
    old = torch.zeros(1, 2, 1, 1)  # σ = 1/2
    # per class: -(1/2 ln 3/4 + 1/2 ln 1/4), summed over two classes
    assert L.kd(z, old).item() == pytest.approx(2 * 0.5 * (math.log(4 / 3) + LN4))
    z2 = torch.randn(2, 3, 4, 4, requires_grad=True)
    L.kd(z2, z2.detach()).backward()
    assert z2.grad.abs().max() < 1e-7  # d/dz BCE(z, σ(z)) = σ(z) - σ(z) = 0


def test_dkd_terms_zero_gradient_at_teacher():
    torch.manual_seed(0)
    w = torch.randn(3, 4, requires_grad=True)
    f = torch.rand(2, 4, 3, 3, requires_grad=True)
    pos, neg = L.decompose(w, f)
    pos_t, neg_t = (t.detach() for t in L.decompose(w, f))
    (L.dkd(pos, pos_t) + L.dkd(neg, neg_t)).backward()
    assert w.grad.abs().max() < 1e-6 and f.grad.abs().max() < 1e-6


def test_aux_loss_by_hand():
    h = torch.tensor([[[[LN3, 0.0]]]])  # σ = 3/4 and 1/2, both negatives
    assert L.aux(h).item() == pytest.approx((LN4 + LN2) / 2)


def test_predict_background_by_threshold():
    def logit(p):
        return math.log(p / (1 - p))

    # channels [aux, c1, c2] at 4 pixels
    probs = [[0.99, 0.2, 0.4],  # no class > 0.5 -> bg, whatever the aux says
             [0.10, 0.6, 0.7],  # -> class 2
             [0.10, 0.5, 0.5],  # exactly 0.5 is not above -> bg
             [0.10, 0.9, 0.3]]  # -> class 1
    logits = torch.tensor([[logit(p) for p in px] for px in probs]).T.reshape(1, 3, 1, 4)
    assert L.predict(logits).tolist() == [[[0, 2, 0, 1]]]


def test_pos_weight_by_step_and_weighted_total():
    cfg = DKDConfig(pos_weight_step0=2.0, pos_weight=1.0, w_mbce=1, w_kd=5, w_dkd_pos=5, w_dkd_neg=5, w_ac=1)
    assert L.pos_weight(cfg, 0) == 2.0 and L.pos_weight(cfg, 3) == 1.0
    one = torch.tensor(1.0)
    assert L.total({"mbce": one, "ac": one}, cfg).item() == 2.0
    assert L.total({"mbce": one, "kd": one, "dkd_pos": one, "dkd_neg": one, "ac": one}, cfg).item() == 17.0


def test_total_matches_reference_on_random_inputs():
    """The per-class reductions are sums over classes, not means (METHOD.md §7.6)."""
    torch.manual_seed(1)
    z = torch.randn(2, 5, 4, 4)
    plain = F.binary_cross_entropy_with_logits(z, torch.sigmoid(z.flip(0)))  # a mean over classes too
    assert L.kd(z, z.flip(0)).item() == pytest.approx(5 * plain.item(), rel=1e-5)


def test_warmup_poly_schedule():
    from wilss.methods.dkd import warmup_poly

    f = warmup_poly(100, 0.9, 0.2)
    assert f(0) == pytest.approx(1e-3)
    assert f(10) == pytest.approx((1e-3 + (1 - 1e-3) * 0.5) * 0.9 ** 0.9)
    assert f(20) == pytest.approx(0.8 ** 0.9)
    plain = warmup_poly(100, 0.9, 0.0)
    assert plain(0) == 1.0 and plain(50) == pytest.approx(0.5 ** 0.9)


def test_student_aux_channel_sees_detached_features():
    from wilss.models.student import Student, build_backbone

    backbone, ch = build_backbone("resnet-tiny", 8)
    model = Student(backbone, ch, [4], 16, 8, aux_classifier=True, last_conv=True)
    assert [h.out_channels for h in model.heads] == [1, 3] and model.n_classes == 4
    model.add_head(2)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 6, 32, 32)
    out[:, 0].sum().backward()  # the aux channel alone: no gradient reaches the features
    assert model.heads[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None or not p.grad.any() for p in [*model.backbone.parameters(),
                                                            *model.aspp.parameters(),
                                                            *model.last_conv.parameters()])
    # the default student is unchanged (no aux, no last conv)
    plain = Student(*build_backbone("resnet-tiny", 8), [4], 16, 8)
    assert [h.out_channels for h in plain.heads] == [4]
    assert not list(plain.last_conv.parameters()) and not any("last_conv" in k for k in plain.state_dict())
