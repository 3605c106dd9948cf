"""Front door of the data stage: dataset registry and ``prepare`` (lists, class sets, splits).

``prepare(data_cfg)`` does everything that reads the disk but not the pixels of training: it lists
the train and val images, scans (or loads from cache) their class sets, builds every step's split
with the MiB rule, and refuses empty splits. The trainers then build torch datasets from it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from wilss.config import DataConfig
from wilss.data import classes, splits, synthetic
from wilss.data.classsets import class_presence
from wilss.data.readers import ImageList, read_ade, read_coco_voc, read_voc
from wilss.data.tasks import Task, get_task
from wilss.errors import DataError


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    classes: tuple[str | None, ...]  # index = raw class id
    read: Callable[..., ImageList]  # (root, split, layout) -> ImageList


DATASETS = {
    "voc": DatasetSpec("voc", classes.VOC, read_voc),
    "synthetic": DatasetSpec("synthetic", synthetic.CLASSES, partial(read_voc, source="synthetic")),
    "coco-voc": DatasetSpec("coco-voc", classes.COCO, read_coco_voc),
    "ade": DatasetSpec("ade", classes.ADE, read_ade),
}


def default_cache_dir() -> Path:
    env = os.environ.get("WILSS_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "wilss"


def resolve_root(cfg: DataConfig, cache_dir: Path, progress: bool = True) -> Path:
    """The dataset's folder; for the synthetic default, generate the benchmark on first use."""
    if cfg.dataset == "synthetic" and not cfg.root:
        params = {"seed": cfg.synthetic_seed, "n_train": cfg.synthetic_train, "n_val": cfg.synthetic_val,
                  "size": cfg.synthetic_size}
        return synthetic.ensure(synthetic.default_root(cache_dir, **params), progress=progress, **params)
    if not cfg.root:
        raise DataError(f"dataset '{cfg.dataset}' needs its data root: pass --data-root DIR "
                        f"(or --set data.root=DIR)")
    return Path(cfg.root).expanduser()


@dataclass(frozen=True)
class PreparedData:
    """Everything the protocol needs to know about the data before reading pixels."""

    task: Task
    overlap: bool
    class_names: tuple[str, ...]  # channel index -> name, in task order
    train: ImageList
    val: ImageList
    present_train: np.ndarray  # (N_train, n_raw) bool
    present_val: np.ndarray  # (N_val, n_raw) bool
    train_splits: list[np.ndarray]  # per step: indices into ``train``


def prepare(cfg: DataConfig, cache_dir: str | Path | None = None, progress: bool = True) -> PreparedData:
    spec = DATASETS[cfg.dataset]
    task = get_task(cfg.dataset, cfg.task)
    cache_dir = Path(cache_dir or cfg.cache_dir or default_cache_dir())
    root = resolve_root(cfg, cache_dir, progress)
    train = spec.read(root, "train", cfg.layout)
    val = spec.read(root, "val", cfg.layout)
    n_raw = len(spec.classes)
    present_train = class_presence(train, n_raw, cache_dir, progress=progress)
    present_val = class_presence(val, n_raw, cache_dir, progress=progress)
    train_splits = splits.all_train_indices(present_train, task, cfg.overlap, train.sources)
    setting = "overlap" if cfg.overlap else "disjoint"
    for t, idx in enumerate(train_splits):
        if len(idx) == 0:
            raise DataError(f"step {t} of {cfg.dataset} task {task.name} ({setting}) has no training image "
                            f"(no image holds classes {list(task.new(t))}): check data.root, or pick "
                            f"another task or setting")
    names = tuple(str(spec.classes[c]) for c in task.order)
    return PreparedData(task, cfg.overlap, names, train, val, present_train, present_val, train_splits)
