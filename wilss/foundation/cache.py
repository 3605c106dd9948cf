"""Content-addressed evidence store: one verified file per (model kind, image) under the cache folder.

Layout: ``<cache_dir>/evidence/<model-key>/<2 hex>/<key>.ev`` where

- ``model-key`` = ``<kind>-<model name>-<12 hex>``, the hex naming everything about the model that changes
  its output (model name, weights digest, resolution, dense mode or prompt set, format version);
- ``key`` = sha256 of that identity plus the item (the image file's content hash, or a class name).

A file is ``MAGIC``, the header's length (4 bytes, little endian), a JSON header ``{"key", "tensors":
[[name, dtype, shape], ...], "digest"}`` and the tensors' bytes, each starting at a multiple of 64
bytes (zero padding), so a tensor can be a view of the file's buffer. ``digest`` is a sha256 over the
header (without it) and the tensors' bytes. Reading is one ``read`` and a hash: no pickle, no
zip (a training loader reads every image's entries every epoch; ``torch.load`` cost ten times more).
A file is written to a temp file and renamed (``wilss.atomic``), so concurrent writers of the same
entry are safe (the last rename wins; both wrote the same content) and a killed writer leaves no
partial entry. A read that fails in any way (truncated, corrupt, wrong key or digest) counts as a miss
and removes the file, so the caller rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from pathlib import Path

import torch

from wilss.atomic import atomic_path

FORMAT = 2  # bump when what a file holds changes: every old entry becomes a miss
MAGIC = b"WILSSEV2"
SUFFIX = ".ev"
ALIGN = 64  # bytes: where every tensor of a file starts


def sha256_json(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def model_key(identity: dict) -> str:
    """Folder name of one model configuration: readable prefix plus a hash of the whole identity."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(identity["model"]))[:60]
    return f"{identity['kind']}-{slug}-{sha256_json({**identity, 'format': FORMAT})[:12]}"


def entry_key(identity: dict, item: str) -> str:
    """Key of one entry: the model identity plus the item (image content hash or class name)."""
    return sha256_json({**identity, "format": FORMAT, "item": item})


class EvidenceStore:
    """Verified, atomically written tensor files under ``<cache_dir>/evidence``."""

    def __init__(self, cache_dir: str | Path):
        self.root = Path(cache_dir) / "evidence"

    def path(self, mkey: str, key: str) -> Path:
        return self.root / mkey / key[:2] / f"{key}{SUFFIX}"

    def read(self, mkey: str, key: str) -> dict[str, torch.Tensor] | None:
        """The entry's tensors, or None when absent or invalid (an invalid file is removed)."""
        path = self.path(mkey, key)
        try:
            with open(path, "rb") as f:  # straight into a writable buffer: the tensors are views of it
                data = bytearray(os.fstat(f.fileno()).st_size)
                f.readinto(data)  # a file that shrank meanwhile leaves zeros: the digest refuses it
        except FileNotFoundError:
            return None
        try:
            tensors = decode(data, key)
        except Exception:  # noqa: BLE001 - truncated, garbage bytes, missing fields: all the same to us
            tensors = None
        if tensors is None:
            path.unlink(missing_ok=True)
        return tensors

    def write(self, mkey: str, key: str, tensors: dict[str, torch.Tensor]) -> None:
        """Store ``tensors`` (their bytes, whatever storage they are views of)."""
        with atomic_path(self.path(mkey, key)) as tmp:
            write_file(tmp, encode(tensors, key))


def encode(tensors: dict[str, torch.Tensor], key: str) -> list[bytes]:
    """The file's bytes, in pieces: magic, header length, header, then each tensor's (padded) bytes."""
    blobs = []
    for t in tensors.values():
        b = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        blobs.append(b + bytes(-len(b) % ALIGN))
    meta = {"key": key, "tensors": [[name, str(t.dtype).removeprefix("torch."), list(t.shape)]
                                    for name, t in tensors.items()]}
    header = json.dumps({**meta, "digest": _digest(meta, blobs)}).encode()
    header += b" " * (-(len(MAGIC) + 4 + len(header)) % ALIGN)  # JSON allows trailing blanks
    return [MAGIC, struct.pack("<I", len(header)), header, *blobs]


def decode(data: bytearray, key: str) -> dict[str, torch.Tensor] | None:
    """The tensors of a file's bytes (views of ``data``), or None unless it is a valid entry for ``key``."""
    if data[:len(MAGIC)] != MAGIC:
        return None
    start = len(MAGIC) + 4
    (n,) = struct.unpack("<I", data[len(MAGIC):start])
    header = json.loads(bytes(data[start:start + n]))
    if header.get("key") != key:
        return None
    view, offset, out, blobs = memoryview(data), start + n, {}, []
    for name, dtype, shape in header["tensors"]:
        dtype = getattr(torch, dtype)
        nbytes = torch.Size(shape).numel() * dtype.itemsize
        padded = nbytes + (-nbytes % ALIGN)
        blobs.append(view[offset:offset + padded])
        out[name] = torch.frombuffer(data, dtype=dtype, count=nbytes // dtype.itemsize, offset=offset) \
            .view(shape) if nbytes else torch.empty(shape, dtype=dtype)
        offset += padded
    if offset != len(data) or header["digest"] != _digest({k: header[k] for k in ("key", "tensors")}, blobs):
        return None
    return out


def _digest(meta: dict, blobs: list) -> str:
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for blob in blobs:
        h.update(blob)
    return h.hexdigest()


def write_file(path: Path, pieces: list[bytes]) -> None:
    with open(path, "wb") as f:
        f.writelines(pieces)
