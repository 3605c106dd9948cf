"""Shared fixtures: an isolated cache folder, a small synthetic benchmark, the shared VOC metadata."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
VOC_META = SHARED / "data" / "voc-wilson"


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    """Every test writes its caches (and the synthetic benchmark) under one temp folder."""
    path = tmp_path_factory.mktemp("wilss-cache")
    old = os.environ.get("WILSS_CACHE_DIR")
    os.environ["WILSS_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("WILSS_CACHE_DIR", None)
    else:
        os.environ["WILSS_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def small_synthetic(tmp_path_factory) -> Path:
    """A 120 + 40 image synthetic benchmark at 32 px (VOC-aug layout)."""
    from wilss.data import synthetic

    return synthetic.generate(tmp_path_factory.mktemp("synth") / "bench", seed=3, n_train=120, n_val=40,
                              size=32, progress=False)


@pytest.fixture(scope="session")
def voc_meta() -> Path:
    if not (VOC_META / "voc_1h_labels_train.npy").is_file():
        pytest.skip("../shared/data/voc-wilson is not present")
    return VOC_META
