"""Per-image class sets, built once by scanning the masks, and cached.

The split rule needs, for every image, the set of classes in its mask. Scanning 10k masks takes
seconds to minutes, so the result (a presence matrix) is cached under ``<cache_dir>/classsets/``, keyed
by a hash of the mask files it came from (path, size, mtime) and the class count: edit a mask and the
key changes, so a stale cache is never read. Each entry ``<key>.npy`` has a ``<key>.npy.sha256``
beside it (size and sha256 of the entry, written after it): an entry that does not match it (a
truncated or damaged file) is scanned again and replaced. The scan also validates the masks: a value
outside the class range is an error naming the file and the fix.
"""

from __future__ import annotations

import hashlib
import io
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from wilss.atomic import atomic_path
from wilss.data.readers import ImageList
from wilss.errors import DataError

CACHE_VERSION = 1


def scan_mask(path: Path, raw_lut: np.ndarray | None, n_classes: int) -> np.ndarray:
    """The classes in one mask as a (n_classes,) bool row; DataError on values outside the range."""
    try:
        with Image.open(path) as im:
            values = np.unique(np.asarray(im))
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read mask {path} ({e}): replace the file with a valid PNG") from None
    if raw_lut is not None:
        values = np.unique(raw_lut[values])
    bad = values[(values >= n_classes) & (values != 255)]
    if len(bad):
        raise DataError(f"mask {path} holds values {bad.tolist()} outside the class range 0..{n_classes - 1} "
                        f"(255 = void): masks must be class-index PNGs, not colour images")
    row = np.zeros(n_classes, dtype=bool)
    row[values[values < n_classes]] = True
    return row


def _scan_chunk(args: tuple[list[Path], list[np.ndarray | None], int]) -> np.ndarray:
    paths, luts, n_classes = args
    return np.stack([scan_mask(p, lut, n_classes) for p, lut in zip(paths, luts)])


def cache_key(images: ImageList, n_classes: int) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}:{n_classes}".encode())
    for i, mask in enumerate(images.masks):
        st = mask.stat()
        h.update(f"{mask}|{st.st_size}|{st.st_mtime_ns}|{images.sources[i]}\n".encode())
    for source, lut in sorted(images.source_luts.items()):
        h.update(source.encode() + lut.tobytes())
    return h.hexdigest()[:24]


def class_presence(images: ImageList, n_classes: int, cache_dir: str | Path | None = None,
                   workers: int | None = None, progress: bool = True) -> np.ndarray:
    """(N, n_classes) bool presence matrix of the images' masks, from the cache when it is fresh."""
    path = None
    if cache_dir:
        path = Path(cache_dir) / "classsets" / f"{cache_key(images, n_classes)}.npy"
        present = _read_entry(path)
        if present is not None and present.shape == (len(images), n_classes):
            return present
    present = _scan(images, n_classes, workers, progress)
    if path is not None:
        buf = io.BytesIO()
        np.save(buf, present)
        data = buf.getvalue()
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
        with atomic_path(_digest_path(path)) as tmp:  # last: an entry without it is not trusted
            tmp.write_text(_digest(data))
    return present


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _digest(data: bytes) -> str:
    return f"{len(data)} {hashlib.sha256(data).hexdigest()}\n"


def _read_entry(path: Path) -> np.ndarray | None:
    """A cache entry whose size and sha256 match its ``.sha256`` file; None when absent, unverified
    or unreadable (it is then scanned again and replaced)."""
    try:
        data, want = path.read_bytes(), _digest_path(path).read_text()
    except OSError:
        return None
    if _digest(data) != want:
        return None
    try:
        return np.load(io.BytesIO(data))
    except (OSError, ValueError, EOFError):
        return None


def _scan(images: ImageList, n_classes: int, workers: int | None, progress: bool) -> np.ndarray:
    workers = workers or min(8, os.cpu_count() or 1)
    luts = [images.raw_lut(i) for i in range(len(images))]
    size = 256
    chunks = [(list(images.masks[i:i + size]), luts[i:i + size], n_classes)
              for i in range(0, len(images), size)]
    bar = tqdm(total=len(images), desc="scanning masks", unit="mask", disable=not progress, leave=False)
    rows = []
    if workers <= 1 or len(chunks) == 1:
        for chunk in chunks:
            rows.append(_scan_chunk(chunk))
            bar.update(len(chunk[0]))
    else:
        with ProcessPoolExecutor(workers) as pool:
            for chunk, result in zip(chunks, pool.map(_scan_chunk, chunks)):
                rows.append(result)
                bar.update(len(chunk[0]))
    bar.close()
    return np.concatenate(rows)
