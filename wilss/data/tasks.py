"""Incremental tasks: which classes each step adds (METHOD.md §1.2, §1.7, §1.8).

A task is a dataset plus a tuple of steps, each a tuple of raw class ids (background 0 is never
listed: it belongs to every step). Disjoint vs overlap is not part of the task; it is the split rule's
flag (``wilss.data.splits``). Inside wilss every label is re-indexed to the task order: channel 0 is
background, channels 1.. are the classes in the order the steps add them. For the standard VOC and ADE
tasks this is the identity; for COCO-to-VOC it packs the scattered COCO ids.
"""

from __future__ import annotations

from dataclasses import dataclass

from wilss.data import classes
from wilss.errors import ConfigError


@dataclass(frozen=True)
class Task:
    dataset: str
    name: str
    steps: tuple[tuple[int, ...], ...]  # raw class ids added at each step
    # Per-step image source (COCO-to-VOC trains step 0 on COCO, step 1 on VOC); None = every image.
    sources: tuple[str, ...] | None = None
    note: str = ""

    @property
    def n_steps(self) -> int:
        return len(self.steps)

    @property
    def order(self) -> tuple[int, ...]:
        """Channel index -> raw class id: (0, *step 0 classes, *step 1 classes, ...)."""
        return (0,) + tuple(c for step in self.steps for c in step)

    def new(self, t: int) -> tuple[int, ...]:
        return self.steps[t]

    def old(self, t: int) -> tuple[int, ...]:
        return tuple(c for step in self.steps[:t] for c in step)

    def seen(self, t: int) -> tuple[int, ...]:
        return tuple(c for step in self.steps[: t + 1] for c in step)

    def future(self, t: int) -> tuple[int, ...]:
        return tuple(c for step in self.steps[t + 1 :] for c in step)

    def n_seen(self, t: int) -> int:
        """Number of output channels at step t, background included."""
        return 1 + len(self.seen(t))

    def describe(self) -> str:
        return " | ".join(_ranges(step) for step in self.steps)


def _ranges(ids: tuple[int, ...]) -> str:
    """(1, 2, 3, 5) -> '1-3,5'."""
    parts, start = [], None
    for i, c in enumerate(ids):
        if start is None:
            start = c
        if i + 1 == len(ids) or ids[i + 1] != c + 1:
            parts.append(f"{start}" if start == c else f"{start}-{c}")
            start = None
    return ",".join(parts)


def _incremental(first: int, per_step: int, total: int) -> tuple[tuple[int, ...], ...]:
    """Classes 1..first at step 0, then ``per_step`` classes per step up to ``total``."""
    steps = [tuple(range(1, first + 1))]
    for start in range(first + 1, total + 1, per_step):
        steps.append(tuple(range(start, min(start + per_step, total + 1))))
    return tuple(steps)


TASKS: dict[tuple[str, str], Task] = {}


def register(task: Task) -> Task:
    TASKS[(task.dataset, task.name)] = task
    return task


# Pascal VOC (§1.2): the MiB / PLOP / DKD / WILSON task dictionaries.
for _name, _first, _per in [("19-1", 19, 1), ("15-5", 15, 5), ("15-1", 15, 1), ("10-10", 10, 10),
                            ("10-1", 10, 1), ("10-5", 10, 5), ("10-2", 10, 2)]:
    register(Task("voc", _name, _incremental(_first, _per, 20)))
register(Task("voc", "15-5s", _incremental(15, 1, 20), note="MiB's name for 15-1"))
register(Task("voc", "5-3", _incremental(5, 3, 20), note="from SSUL"))
register(Task("voc", "19-1b", (tuple(c for c in range(1, 21) if c != 5), (5,)),
              note="WILSON only: bottle last"))

# COCO-to-VOC (§1.7): 60 non-VOC COCO classes on COCO images, then the 20 VOC classes on VOC images.
_COCO_USED = tuple(i for i, name in enumerate(classes.COCO) if i and name is not None)
_VOC_IN_COCO = tuple(sorted(classes.VOC_TO_COCO[1:]))
register(Task("coco-voc", "coco-to-voc",
              (tuple(c for c in _COCO_USED if c not in _VOC_IN_COCO), _VOC_IN_COCO),
              sources=("coco", "voc"), note="WILSON's 'voc' task"))

# ADE20K (§1.8): label 0 ("other") is background; DKD runs these in overlap only.
for _name, _first, _per in [("100-50", 100, 50), ("100-10", 100, 10), ("50-50", 50, 50), ("100-5", 100, 5)]:
    register(Task("ade", _name, _incremental(_first, _per, 150)))

# Synthetic benchmark (15 classes), mirroring the VOC shapes: two steps, multi-step, single-class steps.
for _name, _first, _per in [("10-5", 10, 5), ("10-1", 10, 1), ("5-5", 5, 5), ("14-1", 14, 1), ("5-2", 5, 2)]:
    register(Task("synthetic", _name, _incremental(_first, _per, 15)))

assert len(TASKS[("coco-voc", "coco-to-voc")].steps[0]) == 60


def get_task(dataset: str, name: str) -> Task:
    datasets = sorted({d for d, _ in TASKS})
    if dataset not in datasets:
        raise ConfigError(f"unknown dataset '{dataset}': choose one of {', '.join(datasets)}")
    task = TASKS.get((dataset, name))
    if task is None:
        names = [n for d, n in TASKS if d == dataset]
        raise ConfigError(f"unknown task '{name}' for dataset '{dataset}': choose one of "
                          f"{', '.join(names)} (list them with `wilss tasks`)")
    return task
