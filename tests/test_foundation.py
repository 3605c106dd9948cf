"""Foundation wrappers and evidence cache: parity with the models' own computations, real
architectures at 224 px (random init, no download), the content-addressed cache, clear errors."""

from __future__ import annotations

import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from wilss.config import FoundationConfig
from wilss.data.readers import ImageList
from wilss.errors import ConfigError
from wilss.foundation import ClipScorer, FoundationEvidence, VitEvidence, tiny
from wilss.foundation import cache as cache_module
from wilss.foundation.cache import SUFFIX
from wilss.foundation.clip import clip_patch_size, value_path
from wilss.pseudo.attention import attention_at

TINY = FoundationConfig(clip_model=tiny.TINY_CLIP, clip_pretrained="", vit_model=tiny.TINY_VIT, vit_pretrained="",
                        resolution=64, prompts="short", batch_size=3)


def _images(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ---- ViT: queries and keys ---------------------------------------------------------------------------


def _model_attention(vit: VitEvidence, images: torch.Tensor) -> torch.Tensor:
    """The last block's own softmax attention (B, heads, N, N), hooked on the non-fused path."""
    attn = vit.model.blocks[-1].attn
    assert not attn.fused_attn
    seen = []
    handle = attn.attn_drop.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        vit.model.forward_features((images - vit.mean) / vit.std)
    handle.remove()
    return seen[0]


@pytest.mark.parametrize("model, size, grid", [(tiny.TINY_VIT, 64, 8), (tiny.TINY_VIT, 96, 12),
                                                ("vit_base_patch16_224", 224, 14)])
def test_attention_from_qk_equals_the_models_softmax(model, size, grid):
    cfg = FoundationConfig(vit_model=model, vit_pretrained="", resolution=size)
    vit = VitEvidence(cfg)
    images = _images(1 if size == 224 else 2, size)
    q, k, hw = vit.qk(images)
    heads, dh = vit.model.blocks[-1].attn.num_heads, vit.model.blocks[-1].attn.head_dim
    assert hw == (grid, grid) and q.shape == (len(images), heads, grid * grid, dh) and k.shape == q.shape
    idx = torch.tensor([[0, 5, grid * grid - 1]] * len(images))
    ours = attention_at(q, k, idx)  # (B, S, heads, T)
    p = vit.model.num_prefix_tokens
    full = _model_attention(vit, images)[:, :, p + idx[0], p:]  # (B, heads, S, T): rows of patch queries
    theirs = (full / full.sum(-1, keepdim=True)).transpose(1, 2)  # renormalised over the patch keys
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


# ---- CLIP: dense features and text -------------------------------------------------------------------


def test_tiny_clip_shapes_normalisation_and_modes():
    maskclip = ClipScorer(TINY)
    tokens = ClipScorer(FoundationConfig(**{**TINY.__dict__, "dense": "tokens"}))
    images = _images(2)
    f = maskclip.dense_features(images)
    assert f.shape == (2, 64, 8, 8) and f.dtype == torch.float32
    torch.testing.assert_close(f.norm(dim=1), torch.ones(2, 8, 8))
    assert not torch.allclose(f, tokens.dense_features(images), atol=1e-3)
    text = maskclip.text_embeddings(["circle", "star", "pottedplant"])
    assert text.shape == (3, 64)
    torch.testing.assert_close(text.norm(dim=1), torch.ones(3))
    imagenet = ClipScorer(FoundationConfig(**{**TINY.__dict__, "prompts": "imagenet"}))
    assert not torch.allclose(imagenet.text_embeddings(["circle"]), text[:1], atol=1e-3)
    assert maskclip.logit_scale == pytest.approx(1 / 0.07, rel=1e-4)
    assert maskclip.dense_features(_images(1, 96)).shape == (1, 64, 12, 12)  # resized positional embedding


def test_timm_tower_dense_features_decompose_the_image_embedding():
    """wilss-tiny-clip-rn: proj at every trunk location; its mean over locations is the image embedding."""
    cfg = FoundationConfig(**{**TINY.__dict__, "clip_model": tiny.TINY_CLIP_RN})
    scorer = ClipScorer(cfg)
    assert clip_patch_size(tiny.TINY_CLIP_RN) == scorer.patch_size == 8 and scorer.grid(64) == (8, 8)
    images = _images(2)
    f = scorer.dense_features(images)
    assert f.shape == (2, 64, 8, 8) and f.dtype == torch.float32
    torch.testing.assert_close(f.norm(dim=1), torch.ones(2, 8, 8))
    # MaskCLIP's route reduces to the same features for an average-pooled linear head
    tokens = ClipScorer(FoundationConfig(**{**cfg.__dict__, "dense": "tokens"}))
    assert torch.equal(f, tokens.dense_features(images))
    x = (images - scorer.mean) / scorer.std
    with torch.no_grad():
        raw = scorer._timm_dense(x)  # (B, d, h, w), before normalisation
        embedding = scorer.model.encode_image(x)  # (B, d), unnormalised
    assert scorer.model.visual.head.proj.bias is None
    torch.testing.assert_close(raw.mean((2, 3)), embedding, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(F.normalize(raw, dim=1), f)
    assert scorer.dense_features(_images(1, 96)).shape == (1, 64, 12, 12)


def test_tokens_route_equals_open_clip_patch_tokens():
    scorer = ClipScorer(FoundationConfig(**{**TINY.__dict__, "dense": "tokens"}))
    images = _images(2)
    visual = scorer.model.visual
    visual.output_tokens = True
    with torch.no_grad():
        _, tokens = visual((images - scorer.mean) / scorer.std)  # (B, h*w, width), after ln_post
    visual.output_tokens = False
    expected = F.normalize(tokens @ visual.proj, dim=-1).transpose(1, 2).reshape(2, -1, 8, 8)
    torch.testing.assert_close(scorer.dense_features(images), expected, atol=1e-5, rtol=1e-4)


def test_value_path_is_the_attention_branch_with_self_attention_only():
    block = ClipScorer(TINY).model.visual.transformer.resblocks[-1]
    x = torch.randn(2, 65, block.ln_1.normalized_shape[0])
    eye = torch.full((65, 65), float("-inf")).fill_diagonal_(0.0)  # every token attends to itself only
    with torch.no_grad():
        y = block.ln_1(x)
        expected = block.ls_1(block.attn(y, y, y, need_weights=False, attn_mask=eye)[0])
        torch.testing.assert_close(value_path(block, x), expected, atol=1e-5, rtol=1e-4)


def test_local_checkpoint_equals_builtin_weights(tmp_path):
    state = torch.load(tiny.CLIP_WEIGHTS, weights_only=True)
    wrapped = tmp_path / "clip.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, wrapped)
    shipped = FoundationConfig(**{**TINY.__dict__, "clip_model": tiny.TINY_CLIP_FCN, "clip_pretrained": "synthetic",
                                  "vit_pretrained": "synthetic"})
    from_file = FoundationConfig(**{**shipped.__dict__, "clip_pretrained": str(wrapped),
                                    "vit_pretrained": str(tiny.VIT_WEIGHTS)})
    images = _images(2)
    a, b = ClipScorer(shipped), ClipScorer(from_file)
    assert torch.equal(a.dense_features(images), b.dense_features(images))
    random_init = FoundationConfig(**{**shipped.__dict__, "clip_pretrained": ""})
    assert not torch.allclose(a.dense_features(images), ClipScorer(random_init).dense_features(images))
    qa, ka, _ = VitEvidence(shipped).qk(images)
    qb, kb, _ = VitEvidence(from_file).qk(images)
    assert torch.equal(qa, qb) and torch.equal(ka, kb)


def test_real_clip_architecture_at_224px():
    cfg = FoundationConfig(clip_model="ViT-B-16", clip_pretrained="", resolution=224, prompts="short")
    scorer = ClipScorer(cfg)
    f = scorer.dense_features(_images(1, 224))
    assert f.shape == (1, 512, 14, 14)
    torch.testing.assert_close(f.norm(dim=1), torch.ones(1, 14, 14))
    assert scorer.text_embeddings(["dog"]).shape == (1, 512)


# ---- errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("change, words", [
    ({"clip_pretrained": "/no/such/clip.pt"}, ["/no/such/clip.pt", "does not exist"]),
    ({"vit_pretrained": "missing_vit.pth"}, ["missing_vit.pth", "does not exist"]),
    ({"clip_model": "ViT-B-61"}, ["unknown open_clip model", "ViT-B-61"]),
    ({"vit_model": "vit_bsae_patch16_224"}, ["unknown timm model", "did you mean"]),
    ({"clip_model": "ViT-B-16", "clip_pretrained": "opanai"}, ["'opanai'", "openai"]),
    ({"clip_model": "ViT-B-16", "clip_pretrained": "synthetic"}, ["synthetic", tiny.TINY_CLIP_FCN]),
    ({"clip_model": "RN50"}, ["RN50", "not a ViT CLIP"]),
    ({"resolution": 60}, ["resolution=60", "multiple of the patch size 8"]),
])
def test_clear_errors(tmp_path, change, words):
    with pytest.raises(ConfigError) as err:
        FoundationEvidence(FoundationConfig(**{**TINY.__dict__, **change}), tmp_path)
    for word in words:
        assert word in str(err.value)


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    cfg = FoundationConfig(**{**TINY.__dict__, "vit_pretrained": str(tiny.CLIP_WEIGHTS)})
    with pytest.raises(ConfigError, match="does not fit model"):
        VitEvidence(cfg)


# ---- evidence cache ----------------------------------------------------------------------------------


@pytest.fixture
def image_list(tmp_path) -> ImageList:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(5):  # odd sizes: the evidence frame warps the whole image to R x R
        path = tmp_path / "images" / f"im{i}.jpg"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40 + i, 50, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return ImageList(ids=tuple(p.stem for p in paths), images=tuple(paths), masks=tuple(paths),
                     sources=np.full(len(paths), "x"), source_luts={})


def _entries(cache: Path) -> list[Path]:
    return sorted((cache / "evidence").rglob(f"*{SUFFIX}"))


def test_cache_hits_misses_and_lazy_models(tmp_path, image_list):
    cache = tmp_path / "cache"
    ev = FoundationEvidence(TINY, cache)
    assert (ev.clip_grid, ev.vit_grid) == ((8, 8), (8, 8))
    stats = ev.ensure(image_list, np.array([0, 1, 2, 3, 1]), progress=False)
    assert (stats["hits"], stats["misses"]) == (0, 4) and (ev.hits, ev.misses) == (0, 4)
    assert len(_entries(cache)) == 8  # one clip and one vit entry per image
    item = ev.load(image_list, 2)
    assert item["clip"].shape == (64, 8, 8) and item["q"].shape == (4, 64, 32) and item["k"].shape == (4, 64, 32)
    assert all(t.dtype == torch.float16 for t in item.values())
    expected = ev.clip.dense_features(torch.stack([_read(image_list.images[2])]))[0]
    torch.testing.assert_close(item["clip"].float(), expected, atol=2e-3, rtol=0)

    again = FoundationEvidence(TINY, cache)  # a new process: nothing built, everything cached
    stats = again.ensure(image_list, np.arange(4), progress=False)
    assert (stats["hits"], stats["misses"]) == (4, 0)
    assert again._clip is None and again._vit is None
    assert torch.equal(again.load(image_list, 2)["q"], item["q"]) and again.hits == 5

    t1 = ev.text_embeddings(["circle", "star"])
    fresh = FoundationEvidence(TINY, cache)
    assert torch.equal(fresh.text_embeddings(["circle", "star"]), t1) and fresh._clip is None
    assert t1.dtype == torch.float32 and t1.shape == (2, 64)

    other = FoundationEvidence(FoundationConfig(**{**TINY.__dict__, "dense": "tokens"}), cache)
    stats = other.ensure(image_list, np.arange(4), progress=False)
    assert stats["misses"] == 4 and other._vit is None  # only the CLIP entries depend on the dense mode


def _read(path: Path) -> torch.Tensor:
    from wilss.foundation import read_image

    return read_image(path, 64)


def test_corrupt_entries_are_detected_and_rebuilt(tmp_path, image_list):
    cache = tmp_path / "cache"
    ev = FoundationEvidence(TINY, cache)
    ev.ensure(image_list, np.arange(3), progress=False)
    reference = ev.load(image_list, 1)
    entries = _entries(cache)
    entries[0].write_bytes(entries[0].read_bytes()[:100])  # truncated
    data = bytearray(entries[1].read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle
    entries[1].write_bytes(bytes(data))
    fresh = FoundationEvidence(TINY, cache)
    assert fresh.ensure(image_list, np.arange(3), progress=False)["misses"] == 0  # by presence: not read
    for j in range(3):  # load checks every entry it reads and rebuilds the damaged ones
        assert torch.equal(fresh.load(image_list, j)["k"], ev.load(image_list, j)["k"])
    assert 1 <= fresh.misses <= 2 and len(_entries(cache)) == 6
    entries = _entries(cache)
    entries[0].write_bytes(entries[0].read_bytes()[:100])
    stats = FoundationEvidence(TINY, cache).ensure(image_list, np.arange(3), progress=False, verify=True)
    assert stats["misses"] == 1 and stats["hits"] == 2 and len(_entries(cache)) == 6  # the repair pass
    assert torch.equal(FoundationEvidence(TINY, cache).load(image_list, 1)["k"], reference["k"])


def test_concurrent_writers_and_failed_writes_leave_no_partial_files(tmp_path, image_list, monkeypatch):
    cache = tmp_path / "cache"
    results = []

    def worker() -> None:
        results.append(FoundationEvidence(TINY, cache).ensure(image_list, np.arange(5), progress=False))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and len(_entries(cache)) == 10
    assert sorted(r["misses"] for r in results) == [0, 5]  # the lock: one computes, the other waits and hits
    assert not [p for p in cache.rglob("*") if p.is_file() and p.suffix not in (SUFFIX, ".lock")]
    assert FoundationEvidence(TINY, cache).ensure(image_list, np.arange(5), progress=False)["hits"] == 5

    def broken_write(path, pieces):
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    other = tmp_path / "other"
    monkeypatch.setattr(cache_module, "write_file", broken_write)
    with pytest.raises(OSError, match="disk full"):
        FoundationEvidence(TINY, other).ensure(image_list, np.arange(1), progress=False)
    assert not [p for p in other.rglob("*") if p.is_file() and p.suffix != ".lock"]


def test_evidence_pickles_without_models_and_loads_in_a_copy(tmp_path, image_list):
    ev = FoundationEvidence(TINY, tmp_path / "cache")
    ev.ensure(image_list, np.arange(2), progress=False)
    assert ev._clip is not None
    copy = pickle.loads(pickle.dumps(ev))
    assert copy._clip is None and copy._vit is None
    assert torch.equal(copy.load(image_list, 0)["clip"], ev.load(image_list, 0)["clip"])
    assert copy._clip is None  # a cached load never builds a model


def test_progress_without_tqdm_logs_lines(tmp_path, image_list, monkeypatch):
    from wilss.foundation import evidence

    monkeypatch.setattr(evidence, "tqdm", None)
    lines = []
    FoundationEvidence(TINY, tmp_path / "cache").ensure(image_list, np.arange(5), log=lines.append)
    assert lines and lines[-1] == "foundation evidence: 5/5 images"


def test_cli_cache_build(tmp_path, small_synthetic, capsys):
    from wilss.cli import main

    argv = ["cache", "build", "--set", f"data.root={small_synthetic}", "--cache-dir", str(tmp_path), "--quiet"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert main(argv) == 0
    second = capsys.readouterr().out
    n = int(first.split("evidence of ")[1].split()[0])
    assert n > 0 and f"0 hits, {n} misses" in first and f"{n} hits, 0 misses" in second


def test_store_round_trips_any_tensors_and_refuses_damaged_or_foreign_files(tmp_path):
    """The store's file format: dtypes and shapes of any size (odd byte counts, empty), tensors that are
    views of a larger one; a file for another key, a damaged header or payload reads as a miss (and is
    removed)."""
    store = cache_module.EvidenceStore(tmp_path)
    big = torch.randn(10, 7)
    tensors = {"a": torch.randn(3, 5).half(), "b": torch.arange(7, dtype=torch.int64), "c": big[2:4, 1:6],
               "d": torch.empty(0, 4), "e": torch.tensor(1.5, dtype=torch.float64)}
    store.write("m", "k1", tensors)
    back = store.read("m", "k1")
    assert list(back) == list(tensors)
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype and back[name].shape == t.shape and torch.equal(back[name], t), name
    back["a"].add_(1)  # the tensors are writable (views of the file's bytes, not of the file)
    assert torch.equal(store.read("m", "k1")["a"], tensors["a"])

    path = store.path("m", "k1")
    good = path.read_bytes()
    foreign = store.path("m", "k2")
    foreign.parent.mkdir(parents=True, exist_ok=True)
    foreign.write_bytes(good)  # the right format, but written for k1
    assert store.read("m", "k2") is None and not foreign.exists()
    for damage in (lambda b: b[:-1], lambda b: b[:20], lambda b: b.replace(b'"float16"', b'"float32"'),
                   lambda b: b[:-3] + bytes([b[-3] ^ 1]) + b[-2:], lambda b: b"not an entry"):
        path.write_bytes(damage(good))
        assert store.read("m", "k1") is None and not path.exists()
        path.write_bytes(good)
    assert torch.equal(store.read("m", "k1")["c"], big[2:4, 1:6])


def test_the_shipped_clip_tower_sees_a_bounded_neighbourhood():
    """``wilss-tiny-clip-fcn``: output stride 8 and a 29-px receptive field, so the dense features of a
    corner do not change when the opposite corner does (what keeps its class maps local)."""
    scorer = ClipScorer(FoundationConfig(**{**TINY.__dict__, "clip_model": tiny.TINY_CLIP_FCN,
                                            "clip_pretrained": "synthetic"}))
    x = _images(1)
    y = x.clone()
    y[..., 40:, 40:] = 1 - y[..., 40:, 40:]
    a, b = scorer.dense_features(x), scorer.dense_features(y)
    assert a.shape == (1, 64, 8, 8)
    assert torch.equal(a[..., :3, :3], b[..., :3, :3]) and not torch.allclose(a[..., 6:, 6:], b[..., 6:, 6:])
