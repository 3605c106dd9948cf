"""Atomic file writes: write to a temp file in the target's folder, then rename over the target.

Readers (and resumed runs) never see a half-written result row, checkpoint, cache entry or config.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path to write; on success it replaces ``path``, on failure it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes 0600 files; give the result the mode a plain open() would (umask applies), so a
        # cache or results folder shared by a group stays readable by it.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; done once at import (os.umask is process-wide)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock on ``path`` (created if absent): a second process blocks until the first
    leaves the block, or dies (the kernel drops a dead process's lock, so no stale lock survives)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def sha256_file(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def check_writable_dir(folder: str | Path, flag: str) -> None:
    """WilssError (naming ``flag``) unless ``folder`` is, or could be created as, a writable folder.

    Creates nothing that stays: it writes and removes a temp file in the nearest existing ancestor
    (a real write, since permission bits tell nothing to root, ACLs or a read-only mount)."""
    from wilss.errors import WilssError

    folder = Path(folder).expanduser().absolute()
    parent = folder
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        where = "is a file" if parent == folder else f"is under the file {parent}"
        raise WilssError(f"{flag} {folder} {where}: give a folder")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise WilssError(f"{flag} {folder}: cannot write to {parent} ({e.strerror or type(e).__name__}): "
                         f"give a folder you can write to") from None
