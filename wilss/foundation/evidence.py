"""FoundationEvidence: cached CLIP dense features and ViT queries/keys per image (METHOD.md §5.7).

FMWISS's pseudo masks depend on the image only through two frozen models: CLIP's dense features (for
M_init) and the self-supervised ViT's last-block queries and keys (for seed attention). Both are computed
once per image and cached (``wilss.foundation.cache``), so trials that change N, top-K or fusion, and
seeds re-sampled every iteration, cost one small matmul each.

Evidence frame: each image is read, converted to RGB and warped (resized without crop) to R x R
(``foundation.resolution``) before both models, so an evidence map covers the whole original image and a
training crop samples it with ``grid_sample`` coordinates in [-1, 1]. The models are built only when some
entry is missing: a fully cached run never builds them. ``load`` is cheap and the object pickles without
its models, so a torch Dataset can call it inside DataLoader workers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from wilss.atomic import file_lock
from wilss.config import Config, FoundationConfig
from wilss.data.readers import ImageList
from wilss.errors import ConfigError, WilssError
from wilss.foundation.cache import EvidenceStore, entry_key, model_key, sha256_json
from wilss.foundation.checkpoints import file_sha256
from wilss.foundation.clip import ClipScorer, clip_patch_size, clip_weights
from wilss.foundation.prompts import PROMPTS, prompt_name
from wilss.foundation.vit import VitEvidence, vit_grid, vit_weights

try:
    from tqdm import tqdm
except ImportError:  # pragma: no cover - tqdm is a dependency, but progress must not need it
    tqdm = None


def read_image(path: str | Path, resolution: int) -> torch.Tensor:
    """(3, R, R) float32 in [0, 1]: the whole image, RGB, warped to R x R (bicubic)."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        if img.size != (resolution, resolution):
            img = img.resize((resolution, resolution), Image.Resampling.BICUBIC)
        array = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255


class FoundationEvidence:
    """Per-image foundation evidence, cached under ``<cache_dir>/evidence``.

    ``load(images, j)`` -> ``{"clip": (d, h, w), "q": (heads, T, dh), "k": (heads, T, dh)}`` fp16, with
    (h, w) = ``clip_grid`` and T = h' * w' for (h', w') = ``vit_grid``. ``hits`` / ``misses`` count image
    lookups (in ``ensure`` and ``load``) of this process; an image is a miss when any of its entries had
    to be computed.
    """

    def __init__(self, cfg: FoundationConfig, cache_dir: str | Path, device: str | torch.device = "cpu"):
        self.cfg = cfg
        self.device = torch.device(device)
        self.store = EvidenceStore(cache_dir)
        # Validate names, weights and resolution now (cheap); build the models on the first miss.
        clip_src, vit_src = clip_weights(cfg), vit_weights(cfg)
        patch = clip_patch_size(cfg.clip_model)
        if cfg.resolution % patch:
            raise ConfigError(f"foundation.resolution={cfg.resolution} is not a multiple of the patch size "
                              f"{patch} of '{cfg.clip_model}': use {cfg.resolution // patch * patch or patch}")
        self.clip_grid: tuple[int, int] = (cfg.resolution // patch, cfg.resolution // patch)
        self.vit_grid: tuple[int, int] = vit_grid(cfg)
        self._sources = {"clip": clip_src, "vit": vit_src}
        self._identities: dict[str, dict] = {}
        self._image_digests: dict[str, str] = {}  # path -> content hash; travels to DataLoader workers
        self._clip: ClipScorer | None = None
        self._vit: VitEvidence | None = None
        self.hits = 0
        self.misses = 0

    # ---- identities and keys ---------------------------------------------------------------------

    def _identity(self, kind: str) -> dict:
        """Everything about a model that changes its cached output (hashing a weights file once)."""
        if kind not in self._identities:
            cfg = self.cfg
            if kind == "clip":
                ident = {"model": cfg.clip_model, "resolution": cfg.resolution, "dense": cfg.dense}
            elif kind == "vit":
                ident = {"model": cfg.vit_model, "resolution": cfg.resolution}
            else:  # text embeddings: the CLIP text tower and the template set
                ident = {"model": cfg.clip_model, "prompts": sha256_json(PROMPTS[cfg.prompts])[:16]}
            weights = self._sources["vit" if kind == "vit" else "clip"].digest
            self._identities[kind] = {"kind": kind, "weights": weights, **ident}
        return self._identities[kind]

    def _image_digest(self, path: Path) -> str:
        key = str(path)
        if key not in self._image_digests:
            self._image_digests[key] = file_sha256(key)
        return self._image_digests[key]

    def _key(self, kind: str, item: str) -> tuple[str, str]:
        ident = self._identity(kind)
        return model_key(ident), entry_key(ident, item)

    def _read(self, kind: str, path: Path) -> dict[str, torch.Tensor] | None:
        return self.store.read(*self._key(kind, self._image_digest(path)))

    # ---- models, built on first use ----------------------------------------------------------------

    @property
    def clip(self) -> ClipScorer:
        if self._clip is None:
            self._clip = ClipScorer(self.cfg, self.device)
        return self._clip

    @property
    def vit(self) -> VitEvidence:
        if self._vit is None:
            self._vit = VitEvidence(self.cfg, self.device)
        return self._vit

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_clip": None, "_vit": None}  # workers never need the models

    # ---- computing ---------------------------------------------------------------------------------

    def _compute(self, paths: list[Path], need: list[tuple[bool, bool]]) -> None:
        """Compute and store the missing entries of ``paths``; need[i] = (clip missing, vit missing)."""
        images = torch.stack([read_image(p, self.cfg.resolution) for p in paths])  # (B, 3, R, R)
        sel = [i for i, (c, _) in enumerate(need) if c]
        if sel:
            feats = self.clip.dense_features(images[sel]).half()  # (b, d, h, w)
            for i, f in zip(sel, feats):
                self.store.write(*self._key("clip", self._image_digest(paths[i])), {"clip": f})
        sel = [i for i, (_, v) in enumerate(need) if v]
        if sel:
            q, k, _ = self.vit.qk(images[sel])  # (b, heads, T, dh) each
            q, k = q.half(), k.half()
            for i, qi, ki in zip(sel, q, k):
                self.store.write(*self._key("vit", self._image_digest(paths[i])), {"q": qi, "k": ki})

    def _need(self, path: Path, verify: bool) -> tuple[bool, bool]:
        """(CLIP entry missing, ViT entry missing) for one image. ``verify`` reads and checks each entry
        (an invalid one counts as missing); otherwise an entry file that exists counts, and ``load``
        checks it when training reads it (rebuilding it on the spot if it is damaged)."""
        if verify:
            return self._read("clip", path) is None, self._read("vit", path) is None
        digest = self._image_digest(path)
        return tuple(not self.store.path(*self._key(kind, digest)).is_file() for kind in ("clip", "vit"))

    def lock_path(self) -> Path:
        """One lock per pair of model identities: processes computing the same models' evidence take turns."""
        return self.store.root / f"{self._key('clip', '')[0]}+{self._key('vit', '')[0]}.lock"

    def ensure(self, images: ImageList, indices: Iterable[int], progress: bool = True,
               log: Callable[[str], None] = print, verify: bool = False) -> dict:
        """Make sure every image of ``indices`` has evidence; compute the misses in batches. Entries are
        found by presence (``load`` checks each when training reads it, and rebuilds a damaged one), or
        read and checked one by one with ``verify`` (``wilss cache build``: a repair pass).

        Computing holds ``lock_path()``: a second process (another trial of a sweep) that needs the same
        evidence meanwhile waits, then finds it cached instead of computing it again. Returns
        ``{"hits", "misses", "seconds"}`` (images, not entries; a miss is an image this call computed).
        """
        start = time.perf_counter()
        order = list(dict.fromkeys(int(j) for j in np.asarray(list(indices)).ravel()))
        paths = [images.images[j] for j in order]
        missing = [p for p in paths if any(self._need(p, verify))]
        computed = 0
        if missing:
            with file_lock(self.lock_path()):
                todo = [(p, need) for p in missing if any(need := self._need(p, verify))]  # others built some?
                computed = len(todo)
                self._compute_batches(todo, len(paths) - len(todo), len(paths), progress, log)
        self.hits += len(paths) - computed
        self.misses += computed
        return {"hits": len(paths) - computed, "misses": computed, "seconds": time.perf_counter() - start}

    def _compute_batches(self, todo: list[tuple[Path, tuple[bool, bool]]], cached: int, total: int,
                         progress: bool, log: Callable[[str], None]) -> None:
        """Compute ``todo`` in batches of ``foundation.batch_size``, with a progress bar over all images."""
        bar = tqdm(total=total, initial=cached, desc="foundation evidence", disable=not progress) if tqdm else None
        every = max(1, len(todo) // 10)
        for i in range(0, len(todo), self.cfg.batch_size):
            batch = todo[i:i + self.cfg.batch_size]
            self._compute([p for p, _ in batch], [n for _, n in batch])
            if bar is not None:
                bar.update(len(batch))
            elif progress and ((i // every) != ((i + len(batch)) // every) or i + len(batch) == len(todo)):
                log(f"foundation evidence: {cached + i + len(batch)}/{total} images")
        if bar is not None:
            bar.close()

    def load(self, images: ImageList, j: int) -> dict[str, torch.Tensor]:
        """``{"clip": (d, h, w), "q": (heads, T, dh), "k": (heads, T, dh)}`` fp16 evidence of image j.

        A missing or corrupt entry (``ensure`` was not called, or the file was damaged since) is
        computed on the spot.
        """
        path = images.images[j]
        clip, vit = self._read("clip", path), self._read("vit", path)
        if clip is None or vit is None:
            self.misses += 1
            self._compute([path], [(clip is None, vit is None)])
            clip, vit = self._read("clip", path), self._read("vit", path)
            if clip is None or vit is None:
                raise OSError(f"cannot write foundation evidence for {path} under {self.store.root}")
        else:
            self.hits += 1
        return {"clip": clip["clip"], "q": vit["q"], "k": vit["k"]}

    def text_embeddings(self, class_names: list[str]) -> torch.Tensor:
        """(C, d) float32 prompt-ensemble text embeddings (cached per class name and prompt set)."""
        items = [prompt_name(n) for n in class_names]
        rows = {i: self.store.read(*self._key("text", item)) for i, item in enumerate(items)}
        missing = [i for i, row in rows.items() if row is None]
        if missing:
            emb = self.clip.text_embeddings([class_names[i] for i in missing]).float().cpu()  # (m, d)
            for i, e in zip(missing, emb):
                rows[i] = {"text": e.clone()}
                self.store.write(*self._key("text", items[i]), rows[i])
        return torch.stack([rows[i]["text"] for i in range(len(items))])


def ensure_task_evidence(cfg: Config, cache_dir: str | Path, device: str | torch.device = "cpu", *,
                         progress: bool = True, verify: bool = False, log: Callable[[str], None] = print) -> dict:
    """The evidence of every weak step's (steps >= 1) training images of ``cfg``'s task, and the text
    embeddings of their new classes: what FMWISS reads in training, computed ahead of it (``wilss cache
    build``, a sweep's shared build). Returns ``ensure``'s counts and ``images``, ``steps``, ``root``."""
    from wilss.data.datasets import prepare

    data = prepare(cfg.data, cache_dir, progress=progress)
    weak = range(1, data.task.n_steps)
    if not weak:
        raise WilssError(f"task {cfg.data.task} has no weak step (steps >= 1): nothing to cache")
    indices = np.unique(np.concatenate([data.train_splits[t] for t in weak]))
    evidence = FoundationEvidence(cfg.foundation, cache_dir, device)
    stats = evidence.ensure(data.train, indices, progress=progress, log=log, verify=verify)
    later = range(data.task.n_seen(0), data.task.n_seen(weak[-1]))  # channels (task order) after step 0
    evidence.text_embeddings([data.class_names[c] for c in later])
    return stats | {"images": len(indices), "steps": weak, "root": evidence.store.root}
