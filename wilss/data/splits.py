"""The split rule: which images train each step, and which val images test it (METHOD.md §1.3).

Pure functions of a presence matrix ``present`` (N, n_classes) bool, where ``present[i, c]`` says raw
class id c occurs in image i's mask (column 0, background, is never read). This is the MiB rule both
reference codebases use; on VOC it reproduces every published WILSON and DKD split file exactly.
"""

from __future__ import annotations

import numpy as np

from wilss.data.tasks import Task


def train_indices(present: np.ndarray, task: Task, step: int, overlap: bool,
                  sources: np.ndarray | None = None) -> np.ndarray:
    """Indices of the images that train ``step``: any new class; disjoint: nothing outside seen.

    overlap: keep image i iff cls(i) ∩ new ≠ ∅ (old and future classes may occur, as background).
    disjoint: additionally cls(i) ⊆ old ∪ new ∪ {0, 255}: no future (or unlisted) class.
    ``sources`` (N,) restricts a step to one image source when the task names one (COCO-to-VOC).
    """
    keep = present[:, list(task.new(step))].any(axis=1)
    if not overlap:
        others = np.ones(present.shape[1], dtype=bool)
        others[[0, *task.seen(step)]] = False
        keep &= ~present[:, others].any(axis=1)
    if task.sources is not None and sources is not None:
        keep &= sources == task.sources[step]
    return np.flatnonzero(keep)


def eval_indices(present: np.ndarray, task: Task, step: int, selection: str = "all") -> np.ndarray:
    """Val images that test ``step``: "all" (WILSON) or those holding any seen class (DKD's test)."""
    if selection == "all":
        return np.arange(len(present))
    if selection == "seen":
        return np.flatnonzero(present[:, list(task.seen(step))].any(axis=1))
    raise ValueError(f"unknown selection {selection!r}")


def all_train_indices(present: np.ndarray, task: Task, overlap: bool,
                      sources: np.ndarray | None = None) -> list[np.ndarray]:
    return [train_indices(present, task, t, overlap, sources) for t in range(task.n_steps)]
