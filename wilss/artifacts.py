"""Shared step artifacts: a finished step (checkpoint + method state + its metrics), addressed by a
hash of exactly the config that determines it, built once and reused by every run that needs it.

Step 0 of FMWISS depends on none of λ, α, β, N or the fusion type (METHOD.md §5.7), so all trials of
a sweep over those knobs share one step-0 artifact. Which keys determine step t is the method's call
(``Method.sections`` / ``Method.step0_keys``); ``step_key`` hashes them. Builders take an exclusive
file lock per key, so a second process that needs the same artifact waits for it instead of building
it again; entries appear atomically (written into a temp folder, then renamed), so a builder killed
halfway leaves nothing a reader could mistake for a finished artifact.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from wilss.atomic import file_lock
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
        if section in METHOD_SECTIONS:
            if section not in sections or (step == 0 and key not in step0_keys):
                continue
        if step == 0 and key in ("train.epochs_next", "train.lr_next"):
            continue
        out[key] = value
    return out


def step_key(cfg: Config, step: int, sections: tuple[str, ...] = (), step0_keys: tuple[str, ...] = ()) -> str:
    doc = json.dumps({"step": step, "config": step_config(cfg, step, sections, step0_keys)}, sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()[:20]


class StepStore:
    """``<root>/<key>/`` holds ``checkpoint.pt`` and ``row.json`` of one finished step."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key

    def get(self, key: str) -> Path | None:
        p = self.path(key)
        return p if (p / "row.json").is_file() and (p / "checkpoint.pt").is_file() else None

    def lock(self, key: str):
        """Exclusive per-key lock (blocks while another process builds the same artifact)."""
        return file_lock(self.root / f"{key}.lock")

    @contextlib.contextmanager
    def publish(self, key: str):
        """Yields a temp folder to fill; renamed to ``<root>/<key>`` when the block succeeds."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=self.root))
        try:
            yield tmp
            final = self.path(key)
            if final.exists():  # a stale, incomplete entry (no row.json): replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
