"""Shared step artifacts: a finished step (checkpoint + method state + its metrics), addressed by a
hash of exactly the config that determines it, built once and reused by every run that needs it.

Step 0 of FMWISS depends on none of λ, α, β, N or the fusion type (METHOD.md §5.7), so all trials of
a sweep over those knobs share one step-0 artifact. Which keys determine step t is the method's call
(``Method.sections`` / ``Method.step0_keys``); ``step_key`` hashes them. Builders take an exclusive
file lock per key, so a second process that needs the same artifact waits for it instead of building
it again; entries appear atomically (written into a temp folder, then renamed), so a builder killed
halfway leaves nothing a reader could mistake for a finished artifact.

Every entry carries ``manifest.json``: the size and sha256 of each of its files, written at publish
time. ``get`` checks them before handing the entry out; an entry whose files no longer match (a
truncated copy, a disk error, a hand edit) or that has no manifest counts as absent, with a warning
line, and is rebuilt (``publish`` replaces it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from wilss.atomic import file_lock, sha256_file
from wilss.config import Config, flatten

# Keys that never change what a step produces (where files go, logging, loader parallelism).
NEUTRAL = ("data.loader_workers", "data.cache_dir", "train.log_every")
# Sections read by one method only; another method's run does not depend on them.
METHOD_SECTIONS = ("foundation", "pseudo", "fmwiss", "dkd", "mib", "wilson")


def step_config(cfg: Config, step: int, sections: tuple[str, ...], step0_keys: tuple[str, ...]) -> dict:
    """The flat config keys that determine step ``step`` (and so every step before it)."""
    out = {}
    for key, value in flatten(cfg).items():
        section = key.split(".", 1)[0]
        if key in NEUTRAL:
            continue
        if section in METHOD_SECTIONS and (section not in sections or (step == 0 and key not in step0_keys)):
            continue
        if step == 0 and key in ("train.epochs_next", "train.lr_next"):
            continue
        out[key] = value
    return out


def step_key(cfg: Config, step: int, sections: tuple[str, ...] = (), step0_keys: tuple[str, ...] = ()) -> str:
    doc = json.dumps({"step": step, "config": step_config(cfg, step, sections, step0_keys)}, sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()[:20]


def file_digest(path: Path) -> dict:
    """Size and sha256 of a file."""
    return {"size": path.stat().st_size, "sha256": sha256_file(path)}


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


class StepStore:
    """``<root>/<key>/`` holds ``checkpoint.pt``, ``row.json`` and ``manifest.json`` of one finished step."""

    FILES = ("checkpoint.pt", "row.json")
    MANIFEST = "manifest.json"

    def __init__(self, root: str | Path, warn: Callable[[str], None] = _warn):
        self.root = Path(root)
        self.warn = warn
        self._verified: dict[str, tuple] = {}  # key -> (size, mtime, inode) of the files checked last
        self._warned: set[str] = set()  # one warning per bad entry

    def path(self, key: str) -> Path:
        return self.root / key

    def get(self, key: str) -> Path | None:
        """The entry's folder when it is complete and its files match its manifest, else None."""
        p = self.path(key)
        if not (p / "row.json").is_file() or not (p / "checkpoint.pt").is_file():
            return None
        problem = self._problem(key)
        if problem:
            if key not in self._warned:
                self._warned.add(key)
                self.warn(f"step artifact {p} {problem}: not used, the step is rebuilt")
            return None
        return p

    def _problem(self, key: str) -> str:
        """Why the entry ``key`` cannot be trusted ('' when its files match the manifest)."""
        p = self.path(key)
        stats = tuple((p / n).stat() for n in (*self.FILES, self.MANIFEST) if (p / n).is_file())
        stamp = tuple((st.st_size, st.st_mtime_ns, st.st_ino) for st in stats)
        if self._verified.get(key) == stamp:  # checked already in this process, unchanged since
            return ""
        try:
            manifest = json.loads((p / self.MANIFEST).read_text())
        except FileNotFoundError:
            return f"has no {self.MANIFEST} (written by an older wilss)"
        except (OSError, ValueError) as e:
            return f"has an unreadable {self.MANIFEST} ({type(e).__name__})"
        for name in self.FILES:
            want, have = manifest.get(name), file_digest(p / name)
            if not isinstance(want, dict) or want.get("size") != have["size"]:
                return f"{name} is {have['size']} bytes, its manifest says {want and want.get('size')}"
            if want.get("sha256") != have["sha256"]:
                return f"{name} does not match the sha256 in its manifest"
        self._verified[key] = stamp
        return ""

    @contextlib.contextmanager
    def lock(self, key: str):
        """Exclusive per-key lock (blocks while another process builds the same artifact). Holding it,
        any temp folder of ``key`` left by a builder that was killed mid-publish is removed: no live
        process can be writing one."""
        with file_lock(self.root / f"{key}.lock"):
            for stale in self.root.glob(f".{key}.*"):
                shutil.rmtree(stale, ignore_errors=True)
            yield

    @contextlib.contextmanager
    def publish(self, key: str):
        """Yields a temp folder to fill (``checkpoint.pt`` and ``row.json``); when the block succeeds
        it gets its manifest and is renamed to ``<root>/<key>``, replacing a stale entry."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=self.root))
        try:
            yield tmp
            manifest = {name: file_digest(tmp / name) for name in self.FILES}
            (tmp / self.MANIFEST).write_text(json.dumps(manifest, indent=1))
            final = self.path(key)
            if final.exists():  # a stale entry (incomplete, or failed its check): replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
            self._verified.pop(key, None)
            self._warned.discard(key)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
