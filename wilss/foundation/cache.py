"""Content-addressed evidence store: one verified file per (model kind, image) under the cache folder.

Layout: ``<cache_dir>/evidence/<model-key>/<2 hex>/<key>.pt`` where

- ``model-key`` = ``<kind>-<model name>-<12 hex>``, the hex naming everything about the model that changes
  its output (model name, weights digest, resolution, dense mode or prompt set, format version);
- ``key`` = sha256 of that identity plus the item (the image file's content hash, or a class name).

Each file holds ``{"format", "key", "tensors", "digest"}``; ``digest`` is a sha256 over the tensors' names,
dtypes, shapes and bytes. A file is written to a temp file and renamed (``wilss.atomic``), so concurrent
writers of the same entry are safe (the last rename wins; both wrote the same content) and a killed
writer leaves no partial entry. A read that fails in any way (truncated, corrupt, wrong key or digest)
counts as a miss and removes the file, so the caller rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import torch

from wilss.atomic import atomic_path

FORMAT = 1  # bump when what a file holds changes: every old entry becomes a miss


def sha256_json(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def model_key(identity: dict) -> str:
    """Folder name of one model configuration: readable prefix plus a hash of the whole identity."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(identity["model"]))[:60]
    return f"{identity['kind']}-{slug}-{sha256_json({**identity, 'format': FORMAT})[:12]}"


def entry_key(identity: dict, item: str) -> str:
    """Key of one entry: the model identity plus the item (image content hash or class name)."""
    return sha256_json({**identity, "format": FORMAT, "item": item})


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class EvidenceStore:
    """Verified, atomically written tensor files under ``<cache_dir>/evidence``."""

    def __init__(self, cache_dir: str | Path):
        self.root = Path(cache_dir) / "evidence"

    def path(self, mkey: str, key: str) -> Path:
        return self.root / mkey / key[:2] / f"{key}.pt"

    def read(self, mkey: str, key: str) -> dict[str, torch.Tensor] | None:
        """The entry's tensors, or None when absent or invalid (an invalid file is removed)."""
        path = self.path(mkey, key)
        if not path.is_file():
            return None
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            tensors = blob["tensors"]
            ok = blob["format"] == FORMAT and blob["key"] == key and blob["digest"] == tensors_digest(tensors)
        except Exception:  # noqa: BLE001 - truncated zip, garbage bytes, missing fields: all the same to us
            ok = False
        if not ok:
            path.unlink(missing_ok=True)
            return None
        return tensors

    def write(self, mkey: str, key: str, tensors: dict[str, torch.Tensor]) -> None:
        """Store ``tensors`` (CPU copies, own storage: a slice of a batch would save the whole batch)."""
        tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
        blob = {"format": FORMAT, "key": key, "tensors": tensors, "digest": tensors_digest(tensors)}
        with atomic_path(self.path(mkey, key)) as tmp:
            torch.save(blob, tmp)
