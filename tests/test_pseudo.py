"""Pseudo masks (METHOD.md §5.1-§5.2): binarisation, fusion, seeds, seed attention, the online pipeline."""

import math

import pytest
import torch

from wilss.config import PseudoConfig
from wilss.pseudo import (
    PseudoMasks,
    binarize,
    fuse,
    label_map,
    normalize_scores,
    pseudo_masks,
    sample_seeds,
    seed_attention,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- binarize ------------------------------------------------------------------------------------

def test_binarize_mass_by_hand():
    m = torch.tensor([[4.0, 3.0], [2.0, 1.0]])  # total 10; running sum 4, 7, 9, 10
    assert binarize(m, 0.7).tolist() == [[True, True], [False, False]]  # 7 reaches 7 exactly
    assert binarize(m, 0.71).tolist() == [[True, True], [True, False]]
    assert binarize(m, 1.0).all()
    assert binarize(m, 0.0).tolist() == [[True, False], [False, False]]  # at least the maximum


def test_binarize_mass_keeps_k_and_is_minimal():
    g = gen(1)
    for trial in range(200):
        h, w = torch.randint(1, 9, (2,), generator=g).tolist()
        m = torch.randn(h, w, generator=g, dtype=torch.float64)
        if trial % 2:
            m = m.abs()  # non-negative maps are not shifted
        k = float(torch.rand((), generator=g)) * 0.99 + 0.01
        keep = binarize(m, k)
        x = m - m.min().clamp(max=0)
        total, kept = x.sum(), x[keep].sum()
        if total == 0:
            assert not keep.any()
            continue
        assert kept >= k * total - 1e-9
        assert kept - x[keep].min() < k * total


def test_binarize_ties_zero_mass_and_negative_shift():
    assert binarize(torch.full((2, 2), 2.0), 0.3).all()  # ties at the threshold are kept
    assert not binarize(torch.zeros(3, 3), 0.7).any()  # zero mass keeps nothing
    assert not binarize(torch.full((2, 2), -1.0), 0.7).any()  # constant negative: zero mass after shift
    # [-1, 0, 1] is shifted to [0, 1, 2]: mass 3; 2 alone holds 2/3 < 0.7, so 0 joins it
    assert binarize(torch.tensor([[-1.0, 0.0, 1.0]]), 0.7).tolist() == [[False, True, True]]


def test_binarize_fraction_and_relative():
    m = torch.arange(10.0).view(2, 5)
    assert binarize(m, 0.25, "fraction").sum() == 3  # ceil(2.5)
    assert binarize(m, 0.7, "fraction").sum() == 7
    assert binarize(m, 0.0, "fraction").sum() == 1
    r = torch.tensor([[10.0, 7.0, 6.9, 0.0]])
    assert binarize(r, 0.7, "relative").tolist() == [[True, True, False, False]]
    # shifted to [0, 1, 2]: >= 0.5 * 2 keeps 1 and 2
    assert binarize(torch.tensor([[-1.0, 0.0, 1.0]]), 0.5, "relative").tolist() == [[False, True, True]]
    with pytest.raises(ValueError):
        binarize(m, 0.5, "top")


def test_binarize_each_map_on_its_own():
    m = torch.rand(2, 3, 4, 5, generator=gen(2))
    out = binarize(m, 0.6)
    assert out.shape == m.shape and out.dtype == torch.bool
    assert torch.equal(out[1, 2], binarize(m[1, 2], 0.6))
    assert torch.equal(binarize(m * 7 + 3, 0.6, "fraction"), binarize(m, 0.6, "fraction"))


# --- fuse, normalise, label map ------------------------------------------------------------------

def test_fuse_union_intersection_none():
    g = gen(3)
    a, b = torch.rand(2, 3, 4, 4, generator=g) > 0.5, torch.rand(2, 3, 4, 4, generator=g) > 0.5
    u, i = fuse(a, b, "union"), fuse(a, b, "intersection")
    assert (u >= a).all() and (u >= b).all()
    assert (i <= a).all() and (i <= b).all()
    assert torch.equal(fuse(a, b, "none"), a)
    with pytest.raises(ValueError):
        fuse(a, b, "sum")


def test_normalize_scores_by_hand():
    s = torch.tensor([[[[0.1, 0.3], [0.2, 0.5]], [[0.0, 0.0], [0.0, 0.0]], [[1.0, 2.0], [3.0, 5.0]]]])
    valid = torch.tensor([[True, True, False]])
    mm = normalize_scores(s, valid)
    assert torch.allclose(mm[0, 0], torch.tensor([[0.0, 0.5], [0.25, 1.0]]))
    assert (mm[0, 1] == 0).all() and (mm[0, 2] == 0).all()  # constant map -> 0; invalid -> 0
    sm = normalize_scores(s, valid, "softmax", logit_scale=10.0)
    # pixel (0, 0): logits 1 and 0 over the two valid classes -> e / (e + 1)
    assert math.isclose(sm[0, 0, 0, 0].item(), math.e / (math.e + 1), rel_tol=1e-6)
    assert torch.allclose(sm[:, :2].sum(1), torch.ones(1, 2, 2)) and (sm[0, 2] == 0).all()
    assert (normalize_scores(s, torch.zeros(1, 3, dtype=torch.bool), "softmax") == 0).all()


def test_label_map_by_hand():
    fused = torch.tensor([[[[1, 1, 0]], [[0, 1, 0]], [[1, 1, 1]]]], dtype=torch.bool)  # (1, 3, 1, 3)
    scores = torch.tensor([[[[0.9, 0.2, 0.0]], [[0.0, 0.8, 0.0]], [[1.0, 1.0, 1.0]]]])
    valid = torch.tensor([[True, True, False]])  # class 2 covers everything but is not in K(x)
    assert label_map(fused, scores, valid).tolist() == [[[1, 2, 0]]]


# --- seeds and attention -------------------------------------------------------------------------

def test_seeds_come_from_the_foreground_and_are_reproducible():
    masks = torch.rand(2, 3, 5, 6, generator=gen(4)) > 0.6
    masks[1, 2] = False
    masks[1, 2, 3, 4] = True  # a single point: sampled with replacement
    seeds = sample_seeds(masks, 9, gen(7))
    assert seeds.shape == (2, 3, 9) and seeds.dtype == torch.long
    flat = masks.flatten(2)
    assert flat.gather(2, seeds).all()
    assert (seeds[1, 2] == 3 * 6 + 4).all()
    assert torch.equal(seeds, sample_seeds(masks, 9, gen(7)))
    assert not torch.equal(seeds, sample_seeds(masks, 9, gen(8)))
    big = torch.ones(1, 1, 4, 4, dtype=torch.bool)  # 16 points >= 9: no repeats
    assert sample_seeds(big, 9, gen(0)).unique().numel() == 9


def test_empty_mask_falls_back_to_argmax_or_whole_map():
    masks = torch.zeros(1, 2, 3, 3, dtype=torch.bool)
    scores = torch.zeros(1, 2, 3, 3)
    scores[0, 0, 2, 1] = 5.0
    scores[0, 1, 0, 2] = 5.0
    seeds = sample_seeds(masks, 4, gen(0), scores)
    assert (seeds[0, 0] == 7).all() and (seeds[0, 1] == 2).all()
    anywhere = sample_seeds(masks, 4, gen(0))
    assert ((anywhere >= 0) & (anywhere < 9)).all()


def test_seed_attention_by_hand():
    # T = 2 tokens, d = 1; head 0: token 0 has logits (ln 3, 0) -> (3/4, 1/4), token 1 (0, 0) -> (1/2, 1/2);
    # head 1 is all zeros -> (1/2, 1/2) everywhere.
    q = torch.tensor([[[[math.log(3)], [0.0]], [[0.0], [0.0]]]])  # (1, 2 heads, 2, 1)
    k = torch.tensor([[[[1.0], [0.0]], [[0.0], [0.0]]]])
    att = seed_attention(q, k, torch.tensor([[[0, 1]]]))  # one class, seeds at tokens 0 and 1
    # seed 0: heads average (5/8, 3/8); seed 1: (1/2, 1/2); seeds average (9/16, 7/16)
    assert torch.allclose(att, torch.tensor([[[9 / 16, 7 / 16]]]))
    single = seed_attention(q, k, torch.tensor([[[0], [1]]]))  # two classes, one seed each
    assert torch.allclose(single, torch.tensor([[[5 / 8, 3 / 8], [0.5, 0.5]]]))


# --- the online pipeline -------------------------------------------------------------------------

def _inputs(b=2, c=3, d=8, hc=6, wc=6, heads=2, dh=4, hv=4, wv=4, seed=5):
    g = gen(seed)
    feats = torch.nn.functional.normalize(torch.randn(b, d, hc, wc, generator=g), dim=1)
    text = torch.nn.functional.normalize(torch.randn(c, d, generator=g), dim=1)
    q, k = torch.randn(b, heads, hv * wv, dh, generator=g), torch.randn(b, heads, hv * wv, dh, generator=g)
    return feats, text, q, k


def test_pseudo_masks_end_to_end():
    feats, text, q, k = _inputs()
    valid = torch.tensor([[True, False, True], [False, True, False]])
    out = pseudo_masks(feats, text, q, k, valid, PseudoConfig(n_seeds=3), gen(0))
    assert isinstance(out, PseudoMasks)
    assert out.scores.shape == (2, 3, 4, 4) and out.labels.shape == (2, 4, 4)
    for m in (out.init, out.seeds, out.fused):
        assert m.shape == (2, 3, 4, 4) and m.dtype == torch.bool
        assert not m[~valid].any()  # restricted to K(x)
    assert (out.scores[~valid] == 0).all()
    assert (out.fused >= out.init).all() and (out.fused >= out.seeds).all()  # union
    assert out.init[valid].flatten(1).any(1).all() and out.seeds[valid].flatten(1).any(1).all()
    assert set(out.labels[1].unique().tolist()) <= {0, 2}
    again = pseudo_masks(feats, text, q, k, valid, PseudoConfig(n_seeds=3), gen(0))
    assert torch.equal(again.fused, out.fused)
    inter = pseudo_masks(feats, text, q, k, valid, PseudoConfig(n_seeds=3, fusion="intersection"), gen(0))
    assert (inter.fused <= inter.init).all()


def test_fusion_none_skips_attention_and_grids():
    feats, text, _, _ = _inputs()
    valid = torch.tensor([[True, True, False], [False, False, False]])
    out = pseudo_masks(feats, text, None, None, valid, PseudoConfig(fusion="none"), None, vit_grid=(2, 8))
    assert out.seeds is None and torch.equal(out.fused, out.init)
    assert out.init.shape == (2, 3, 2, 8)
    assert (out.labels[1] == 0).all()  # no valid class: all background
    assert pseudo_masks(feats, text, None, None, valid, PseudoConfig(fusion="none"), None).init.shape[-2:] == (6, 6)
    _, _, q, k = _inputs(hv=2, wv=8)
    full = pseudo_masks(feats, text, q, k, valid, PseudoConfig(), gen(0), vit_grid=(2, 8))
    assert full.seeds.shape == (2, 3, 2, 8) and not full.seeds[1].any()
    with pytest.raises(ValueError):
        pseudo_masks(feats, text, None, None, valid, PseudoConfig(), gen(0))


def test_pseudo_masks_follow_the_clip_evidence():
    # Class 0's text matches the features of the left half exactly, class 1's the right half.
    e = torch.eye(4)
    is_left = (torch.arange(4) < 2).expand(4, 4)  # (h, w)
    feats = torch.where(is_left, e[0][:, None, None], e[1][:, None, None])[None]  # (1, 4, 4, 4)
    text = e[:2]
    valid = torch.tensor([[True, True]])
    out = pseudo_masks(feats, text, None, None, valid, PseudoConfig(fusion="none"), None)
    assert torch.equal(out.init[0, 0], is_left) and torch.equal(out.init[0, 1], ~is_left)
    assert torch.equal(out.labels[0], torch.where(is_left, 1, 2))


def test_softmax_bg_scores_by_hand_and_a_background_prompt_keeps_background():
    s = torch.tensor([[[[0.1, 0.3]], [[0.2, 0.0]]]])  # (1, 2, 1, 2)
    valid = torch.tensor([[True, False]])
    bg = torch.tensor([[[[0.2, 0.1]]]])  # (1, 1, 1, 2)
    sm = normalize_scores(s, valid, "softmax_bg", logit_scale=10.0, background=bg)
    # pixel 0: class 0 logit 1 against background 2; pixel 1: 3 against 1; class 1 is not in K(x)
    assert math.isclose(sm[0, 0, 0, 0].item(), math.e / (math.e + math.e ** 2), rel_tol=1e-6)
    assert math.isclose(sm[0, 0, 0, 1].item(), math.e ** 3 / (math.e ** 3 + math.e), rel_tol=1e-6)
    assert (sm[0, 1] == 0).all()
    with pytest.raises(ValueError, match="softmax_bg"):
        normalize_scores(s, valid, "softmax_bg")
    # one labelled class, its text matching the left half; the background prompt matches the right half:
    # softmax over K(x) alone scores every pixel 1, with the background prompt the right half scores low
    e = torch.eye(4)
    is_left = (torch.arange(4) < 2).expand(4, 4)
    feats = torch.where(is_left, e[0][:, None, None], e[1][:, None, None])[None]  # (1, 4, 4, 4)
    cfg = PseudoConfig(fusion="none", topk=0.5, topk_mode="relative")
    plain = pseudo_masks(feats, e[:1], None, None, torch.tensor([[True]]), cfg, None, score_norm="softmax")
    assert plain.init.all()
    with_bg = pseudo_masks(feats, e[:1], None, None, torch.tensor([[True]]), cfg, None, score_norm="softmax_bg",
                           background_emb=e[1])
    assert torch.equal(with_bg.init[0, 0], is_left) and torch.equal(with_bg.labels[0], is_left.long())
