"""Label remapping (METHOD.md §1.5): raw mask values -> task-order indices, as 256-entry lookup tables.

Every mapping is a ``lut`` of shape (256,) uint8 applied as ``lut[mask]``: one gather per image, no
per-class loops. Raw class ids become their channel index in ``task.order`` (identity for VOC and ADE).
"""

from __future__ import annotations

import numpy as np

from wilss.data.tasks import Task

IGNORE = 255
# Test-time marker for pixels of classes not seen yet; the evaluator scores both conventions from it
# (future -> ignore, future -> background), so one pass over the val set serves both (§7.4).
FUTURE = 254


def train_lut(task: Task, step: int, void_policy: str, *, keep_old: bool = False,
              negative_value: int = 0) -> np.ndarray:
    """Training labels at ``step``: new classes keep their index, old and future become background.

    keep_old: old classes keep their index too (joint training sees every pixel label).
    void_policy: 255 -> 0 ("bg"), kept as 255 ("ignore"), or ``negative_value`` ("negative": softmax
    methods pass 0, since a negative for every class is background; sigmoid methods pass 255 and their
    loss counts those pixels as negatives).
    """
    lut = np.zeros(256, dtype=np.uint8)
    index = {c: i for i, c in enumerate(task.order)}
    for c in task.new(step):
        lut[c] = index[c]
    if keep_old:
        for c in task.old(step):
            lut[c] = index[c]
    lut[IGNORE] = {"bg": 0, "ignore": IGNORE, "negative": negative_value}[void_policy]
    return lut


def eval_lut(task: Task, step: int) -> np.ndarray:
    """Test labels at ``step``: seen classes -> index, future classes -> FUTURE, void stays 255."""
    lut = np.zeros(256, dtype=np.uint8)
    index = {c: i for i, c in enumerate(task.order)}
    for c in task.seen(step):
        lut[c] = index[c]
    for c in task.future(step):
        lut[c] = FUTURE
    lut[IGNORE] = IGNORE
    return lut


def image_labels(present: np.ndarray, task: Task, step: int) -> np.ndarray:
    """Image-level labels of a weak step: (N, n_seen) float32, 1 where a new class of ``step`` is present.

    ``present`` is the (N, n_raw) class-presence matrix. Only new classes are labelled (WILSS: the
    labels of step t name C^t only); channel = task-order index, as in the logits.
    """
    out = np.zeros((len(present), task.n_seen(step)), dtype=np.float32)
    index = {c: i for i, c in enumerate(task.order)}
    for c in task.new(step):
        out[:, index[c]] = present[:, c]
    return out
