"""FMWISS loss terms (METHOD.md §5.3-§5.5) against values computed by hand."""

import math

import pytest
import torch

from wilss.losses.fmwiss import (
    dense_contrastive_loss,
    old_class_bce,
    sample_points,
    student_bce,
    student_targets,
    teacher_bce,
    total_loss,
)

LOG2, LN3 = math.log(2), math.log(3)


def close(t: torch.Tensor, value: float) -> bool:
    return math.isclose(t.item(), value, rel_tol=1e-5, abs_tol=1e-7)


# --- dense contrastive loss ----------------------------------------------------------------------

def test_dcl_three_points_by_hand():
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    lab = torch.tensor([0, 0, 1])
    # tau = 1. a: positive b (a.b = 0), negative c (a.c = -1) -> -log(1 / (1 + e^-1));
    # b: positive a (0), negative c (0) -> log 2; c has no positive and is not an anchor.
    expected = (math.log(1 + math.exp(-1)) + LOG2) / 2
    assert close(dense_contrastive_loss(emb, lab, tau=1.0), expected)
    assert close(dense_contrastive_loss(5 * emb, lab, tau=1.0), expected)  # normalised inside


def test_dcl_four_points_by_hand():
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]])
    lab = torch.tensor([0, 0, 0, 1])
    # tau = 0.5, so s = 2 * cosine. a (and c, its twin): positives b (s 0) and c (s 2), negative d (s -2):
    # L = (log(1 + e^-2) + log(1 + e^-4)) / 2. b: positives a, c (s 0), negative d (s 0): L = log 2.
    l_a = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-4))) / 2
    assert close(dense_contrastive_loss(emb, lab, tau=0.5), (2 * l_a + LOG2) / 3)


def test_dcl_degenerate_cases():
    emb = torch.randn(3, 4, requires_grad=True)
    zero = dense_contrastive_loss(emb, torch.tensor([0, 1, 2]))  # no positives anywhere
    assert zero.item() == 0.0
    zero.backward()
    assert (emb.grad == 0).all()
    one_class = dense_contrastive_loss(emb, torch.tensor([4, 4, 4]))  # no negatives: log-ratios 0
    assert one_class.item() == 0.0
    sharp = dense_contrastive_loss(torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2, 2]), tau=1e-4)
    assert torch.isfinite(sharp)


def test_sample_points_per_class_across_the_batch():
    labels = torch.full((2, 4, 4), 255)
    labels[0, :2] = 0  # 8 pixels
    labels[1, :, :3] = 1  # 12 pixels
    labels[0, 3, :3] = 2  # 3 pixels
    emb = torch.randn(2, 3, 4, 4)
    emb[:, 0] = labels.float()  # channel 0 carries the label: rows must stay aligned
    pts, lab = sample_points(emb, labels, 5, torch.Generator().manual_seed(0))
    assert pts.shape == (13, 3) and torch.bincount(lab).tolist() == [5, 5, 3]
    assert torch.equal(pts[:, 0], lab.float())
    again = sample_points(emb, labels, 5, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], pts)
    # Uniform without replacement: one point of class 2 per draw, every pixel of it gets drawn.
    g = torch.Generator().manual_seed(1)
    emb[:, 1] = torch.arange(32.0).view(2, 4, 4)
    seen = {sample_points(emb, labels, 1, g)[0][2, 1].item() for _ in range(40)}
    assert seen == {12.0, 13.0, 14.0}
    assert sample_points(emb, labels, 100, g)[0].shape[0] == 23


# --- teacher terms -------------------------------------------------------------------------------

def test_teacher_bce_by_hand():
    logits = torch.zeros(1, 3, 1, 2)
    logits[0, 2] = LN3  # sigmoid = 3/4
    targets = torch.tensor([[[[1.0, 0.0]], [[1.0, 0.0]]]])  # for channels 0 and 2
    # channel 0: log 2 twice; channel 2: -log(3/4) and -log(1/4)
    full = (2 * LOG2 + math.log(4 / 3) + math.log(4)) / 4
    assert close(teacher_bce(logits, targets, [0, 2]), full)
    first = torch.tensor([[[True, False]]])
    assert close(teacher_bce(logits, targets, [0, 2], first), (LOG2 + math.log(4 / 3)) / 2)
    with pytest.raises(ValueError):
        teacher_bce(logits, targets, [0])


def test_teacher_bce_positive_weight_scales_only_the_positive_term():
    logits = torch.zeros(1, 3, 1, 2)
    logits[0, 2] = LN3  # sigmoid = 3/4
    targets = torch.tensor([[[[1.0, 0.0]], [[1.0, 0.0]]]])  # for channels 0 and 2
    assert close(teacher_bce(logits, targets, [0, 2], pos_weight=[1.0, 1.0]), teacher_bce(logits, targets, [0, 2]))
    # channel 2's positive pixel -log(3/4) is weighted 5x; its negative -log(1/4) and channel 0 stay
    weighted = (2 * LOG2 + 5 * math.log(4 / 3) + math.log(4)) / 4
    assert close(teacher_bce(logits, targets, [0, 2], pos_weight=[1.0, 5.0]), weighted)
    with pytest.raises(ValueError, match="pos_weight"):
        teacher_bce(logits, targets, [0, 2], pos_weight=[5.0])


def test_old_class_bce_by_hand():
    logits = torch.zeros(2, 3, 1, 2, requires_grad=True)
    with torch.no_grad():
        logits[:, 1] = LN3  # old class 1 at p = 3/4 everywhere, old class 2 at 1/2
    pasted = torch.tensor([[[1, 0]], [[0, 0]]])  # image 0 got an instance of class 1 on pixel 0
    img0 = (math.log(4 / 3) + math.log(4) + 2 * LOG2) / 4
    img1 = (2 * math.log(4) + 2 * LOG2) / 4
    assert close(old_class_bce(logits, pasted, [1, 2], torch.tensor([True, False])), img0)
    assert close(old_class_bce(logits, pasted, [1, 2]), (img0 + img1) / 2)
    none = old_class_bce(logits, pasted, [1, 2], torch.tensor([False, False]))
    assert none.item() == 0.0
    none.backward()
    assert (logits.grad == 0).all()


# --- student targets and loss --------------------------------------------------------------------

# Channels: 0 bg, 1 old, 2 and 3 new; two pixels.
P_T = torch.tensor([[0.2, 0.6], [0.5, 0.9], [0.7, 0.1], [0.4, 0.3]])[None, :, None, :]  # (1, 4, 1, 2)
P_PREV = torch.tensor([[0.5, 0.3], [0.8, 0.4]])[None, :, None, :]  # bg and old class only


def targets(**kw):
    args = {"alpha": 0.5, "beta": 0.9, **kw}
    return student_targets(P_T, P_PREV, [1], [2, 3], **args)[0, :, 0]  # (4, 2)


def test_alpha_extremes():
    # hard over {bg, 2, 3}: pixel 0 -> class 2 (0.7); pixel 1 -> bg (0.6), the old class's 0.9 excluded
    assert targets(alpha=1.0)[2:].tolist() == [[1.0, 0.0], [0.0, 0.0]]
    assert torch.allclose(targets(alpha=0.0)[2:], P_T[0, 2:, 0])


def test_beta_extremes_and_swap():
    assert torch.allclose(targets(beta=1.0)[1], P_PREV[0, 1, 0])
    assert torch.allclose(targets(beta=0.0)[1], P_T[0, 1, 0])
    # beta on prev: 0.9 * p_prev + 0.1 * p_T; swapped: 0.9 * p_T + 0.1 * p_prev
    assert torch.allclose(targets(beta=0.9)[1], torch.tensor([0.9 * 0.8 + 0.1 * 0.5, 0.9 * 0.4 + 0.1 * 0.9]))
    assert torch.allclose(targets(beta=0.9, beta_on="teacher")[1],
                          torch.tensor([0.9 * 0.5 + 0.1 * 0.8, 0.9 * 0.9 + 0.1 * 0.4]))


def test_background_min_and_blend():
    # alpha 0.5: q_bg = 0.5 * hard + 0.5 * p_T = (0.1, 0.8); min with p_prev (0.5, 0.3) -> (0.1, 0.3)
    assert torch.allclose(targets()[0], torch.tensor([0.1, 0.3]))
    assert torch.allclose(targets(background="blend")[0], torch.tensor([0.9 * 0.5 + 0.1 * 0.2, 0.9 * 0.3 + 0.1 * 0.6]))


def test_image_labels_zero_absent_new_classes():
    present = torch.tensor([[0, 0, 0, 1]])  # class 2 absent: pixel 0's argmax moves to class 3 (0.4)
    q = targets(image_labels=present)
    assert torch.allclose(q[2], torch.zeros(2))
    assert torch.allclose(q[3], torch.tensor([0.5 + 0.5 * 0.4, 0.5 * 0.3]))


def test_student_targets_take_full_prev_and_carry_no_gradient():
    p_t = P_T.clone().requires_grad_()
    full_prev = torch.cat([P_PREV, torch.zeros(1, 2, 1, 2)], 1)
    q = student_targets(p_t, full_prev, [1], [2, 3], 0.5, 0.9)
    assert not q.requires_grad and torch.allclose(q[0, :, 0], targets())
    with pytest.raises(ValueError):
        student_targets(P_T, P_PREV, [1, 2], [2, 3], 0.5, 0.9)


def test_student_bce_by_hand():
    logits = torch.tensor([LN3, 0.0]).view(2, 1, 1, 1)
    q = torch.tensor([1.0, 0.5]).view(2, 1, 1, 1)
    assert close(student_bce(logits, q), (math.log(4 / 3) + LOG2) / 2)
    assert close(student_bce(logits, q, weight=torch.tensor([1.0, 0.0])), math.log(4 / 3) / (1 + 1e-5))
    two = torch.cat([logits, torch.zeros(2, 1, 1, 1)], 1)
    assert close(student_bce(two, torch.cat([q, q], 1), channels=[0]), (math.log(4 / 3) + LOG2) / 2)


def test_total_loss_sums_terms_and_lambda_zero_cuts_the_dcl_gradient():
    terms = {"seg": torch.tensor(1.0), "teacher_bce": torch.tensor(2.0), "dcl": torch.tensor(3.0),
             "old": torch.tensor(4.0)}
    assert close(total_loss(terms, 0.1), 7.3)
    assert close(total_loss({"seg": torch.tensor(1.5)}, 0.1), 1.5)
    with pytest.raises(ValueError):
        total_loss({"sge": torch.tensor(1.0)}, 0.1)
    emb = torch.randn(4, 3, requires_grad=True)
    head = torch.randn(3, requires_grad=True)
    lab = torch.tensor([0, 0, 1, 1])
    dcl = dense_contrastive_loss(emb, lab)
    for lam, zero in ((0.0, True), (0.1, False)):
        loss = total_loss({"seg": (head ** 2).sum(), "dcl": dcl}, lam)
        g_emb, g_head = torch.autograd.grad(loss, (emb, head), retain_graph=True)
        assert bool((g_emb == 0).all()) is zero and g_head.abs().sum() > 0
