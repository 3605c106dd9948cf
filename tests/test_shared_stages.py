"""Shared stages under concurrency: processes that need the same foundation evidence or the same step
artifact build it once; a builder killed halfway leaves nothing a reader could take for a finished entry.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wilss.artifacts import StepStore
from wilss.config import FoundationConfig
from wilss.data.readers import ImageList
from wilss.foundation import FoundationEvidence, tiny

pytestmark = pytest.mark.faults

TINY = FoundationConfig(clip_model=tiny.TINY_CLIP, clip_pretrained="", vit_model=tiny.TINY_VIT, vit_pretrained="",
                        resolution=64, prompts="short", batch_size=1)


def _write_images(folder: Path, n: int = 6) -> ImageList:
    """Write n random images (in the test process only: a reader in another process must never see a
    half-written file) and return their list."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    return _image_list(folder, n)


def _image_list(folder: Path, n: int = 6) -> ImageList:
    """The list of the images ``_write_images`` wrote (reads nothing)."""
    paths = [folder / f"im{i}.png" for i in range(n)]
    return ImageList(ids=tuple(p.stem for p in paths), images=tuple(paths), masks=tuple(paths),
                     sources=np.full(n, "x"), source_luts={})


def _ensure(cache: str, folder: str, n: int, queue) -> None:
    import torch

    torch.set_num_threads(1)
    queue.put(FoundationEvidence(TINY, cache).ensure(_image_list(Path(folder), n), np.arange(n), progress=False))


def test_two_processes_compute_the_same_evidence_once(tmp_path):
    """Two trials start on a cold cache at the same time: one computes, the other waits and only reads."""
    _write_images(tmp_path / "images")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ensure, args=(str(tmp_path / "cache"), str(tmp_path / "images"), 6, queue))
             for _ in range(2)]
    for p in procs:
        p.start()
    stats = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sorted(s["misses"] for s in stats) == [0, 6]
    assert sorted(s["hits"] for s in stats) == [0, 6]


SLOW_BUILDER = textwrap.dedent("""
    import sys, time
    import numpy as np
    import torch
    sys.path.insert(0, {tests!r})
    from test_shared_stages import TINY, _image_list
    from wilss.foundation import FoundationEvidence
    from wilss.foundation.cache import EvidenceStore

    torch.set_num_threads(1)
    write = EvidenceStore.write
    def slow_write(self, *a, **k):  # one entry, then a long pause: the test kills us in it
        write(self, *a, **k)
        print("wrote", flush=True)
        time.sleep(60)
    EvidenceStore.write = slow_write
    images = _image_list(__import__("pathlib").Path({folder!r}), 6)
    FoundationEvidence(TINY, {cache!r}).ensure(images, np.arange(6), progress=False)
""")


def test_a_builder_killed_halfway_leaves_valid_entries_and_no_stale_lock(tmp_path):
    images = _write_images(tmp_path / "images")
    cache = tmp_path / "cache"
    code = SLOW_BUILDER.format(tests=str(Path(__file__).parent), folder=str(tmp_path / "images"), cache=str(cache))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert proc.stdout.readline().strip() == "wrote"  # it holds the lock, mid-build
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    entries = sorted((cache / "evidence").rglob("*.ev"))
    assert len(entries) == 1  # the one finished entry; the killed write left no temp file behind
    assert not [p for p in cache.rglob("*.tmp")]
    start = time.perf_counter()
    stats = FoundationEvidence(TINY, cache).ensure(images, np.arange(6), progress=False)
    assert time.perf_counter() - start < 60  # the dead builder's lock did not survive it
    # image 0 has its CLIP entry but not its ViT entry: still a miss; all 6 images are computed now
    assert stats["misses"] == 6 and len(list((cache / "evidence").rglob("*.ev"))) == 12


def _hold_artifact_lock(root: str, key: str, ready, release) -> None:
    store = StepStore(root)
    with store.lock(key), store.publish(key) as tmp:
        (tmp / "checkpoint.pt").write_bytes(b"half")
        ready.set()
        release.wait(60)
        os.kill(os.getpid(), signal.SIGKILL)  # die while building, inside the publish block


def test_a_step_artifact_builder_killed_while_building_publishes_nothing(tmp_path):
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold_artifact_lock, args=(str(tmp_path), "k", ready, release))
    proc.start()
    assert ready.wait(60)
    store = StepStore(tmp_path)
    assert store.get("k") is None  # half built: invisible to readers
    release.set()
    proc.join(60)
    assert proc.exitcode == -signal.SIGKILL
    assert list(tmp_path.glob(".k.*"))  # the killed builder's temp folder
    with store.lock("k"):  # the lock died with its holder: the next builder gets it at once
        assert store.get("k") is None and not list(tmp_path.glob(".k.*"))  # and its leftovers are gone
        with store.publish("k") as tmp:
            (tmp / "checkpoint.pt").write_bytes(b"full")
            (tmp / "row.json").write_text("{}")
    assert store.get("k") is not None and (store.get("k") / "checkpoint.pt").read_bytes() == b"full"


def test_the_lock_file_is_per_model_pair(tmp_path):
    a = FoundationEvidence(TINY, tmp_path)
    b = FoundationEvidence(FoundationConfig(**{**TINY.__dict__, "dense": "tokens"}), tmp_path)
    assert a.lock_path() != b.lock_path() and a.lock_path().parent == tmp_path / "evidence"
