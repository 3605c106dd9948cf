"""Metrics (METHOD.md §2): streaming confusion matrix, per-class IoU, old/new/all, hIoU.

Labels are task-order indices (0 = background). At an intermediate step, pixels of future classes
arrive marked ``FUTURE``; the evaluator scores them both ways at once: ignored, and as background.
The field's conventions differ on what "old" and "all" hold (§7.3), so every variant is emitted:
``miou_old`` (old with bg, DKD/PLOP), ``miou_old_nobg`` (WILSON/FMWISS "1-15"), ``miou_new``,
``miou_all`` (with bg), ``miou_all_nobg`` and ``hiou`` = 2·old·new/(old+new).
"""

from __future__ import annotations

import numpy as np
import torch

from wilss.data.labels import FUTURE


class ConfusionMatrix:
    """Streaming (n, n) confusion matrix: rows = ground truth, columns = prediction."""

    def __init__(self, n_classes: int, device: torch.device | str = "cpu"):
        self.n = n_classes
        self.mat = torch.zeros(n_classes, n_classes, dtype=torch.int64, device=device)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred, target: (B, H, W) int; targets >= n (255 void, FUTURE) are skipped."""
        keep = target < self.n
        idx = target[keep] * self.n + pred[keep]
        self.mat += torch.bincount(idx, minlength=self.n * self.n).view(self.n, self.n)

    def merge(self, other: torch.Tensor) -> None:
        self.mat += other.to(self.mat.device)

    def iou(self) -> np.ndarray:
        """Per-class IoU = TP / (TP + FP + FN); NaN where the class is absent from gt and prediction."""
        m = self.mat.double().cpu().numpy()
        tp = np.diag(m)
        denom = m.sum(0) + m.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return tp / denom

    def gt_pixels(self) -> np.ndarray:
        return self.mat.sum(1).cpu().numpy()


class StepEvaluator:
    """Scores one step: both future-class conventions from one pass over the val set."""

    def __init__(self, n_seen: int, device: torch.device | str = "cpu"):
        self.ignore = ConfusionMatrix(n_seen, device)
        self.bg = ConfusionMatrix(n_seen, device)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred (B, H, W) in [0, n_seen); target (B, H, W) with FUTURE and IGNORE markers."""
        self.ignore.update(pred, target)
        self.bg.update(pred, torch.where(target == FUTURE, torch.zeros_like(target), target))


def summarize(cm: ConfusionMatrix, n_old: int, average: str = "present") -> dict[str, float]:
    """Aggregates over classes: ``n_old`` channels (bg + step-0 classes) are old, the rest new.

    average: "present" = mean over classes with gt pixels (WILSON); "all" = NaN counts as 0 (DKD).
    """
    iou = cm.iou()
    if average == "all":
        iou = np.nan_to_num(iou, nan=0.0)
    elif average == "present":
        iou = np.where(cm.gt_pixels() > 0, iou, np.nan)
    else:
        raise ValueError(f"unknown average {average!r}")

    def mean(ids: range) -> float:
        vals = iou[list(ids)]
        return float(np.nanmean(vals)) if len(vals) and not np.all(np.isnan(vals)) else float("nan")

    n = cm.n
    out = {
        "miou_all": mean(range(n)),
        "miou_all_nobg": mean(range(1, n)),
        "miou_old": mean(range(n_old)),
        "miou_old_nobg": mean(range(1, n_old)),
        "miou_new": mean(range(n_old, n)),
    }
    old, new = out["miou_old"], out["miou_new"]
    out["hiou"] = 2 * old * new / (old + new) if old + new > 0 else float("nan")
    return out


def step_metrics(ev: StepEvaluator, n_old: int, class_names: tuple[str, ...], future: str,
                 average: str) -> dict[str, float]:
    """The result-row metrics of one step: the main convention, the other one prefixed, per-class IoU."""
    main, other = (ev.ignore, ev.bg) if future == "ignore" else (ev.bg, ev.ignore)
    row = summarize(main, n_old, average)
    other_name = "bg" if future == "ignore" else "ignore"
    row.update({f"future_{other_name}.{k}": v for k, v in summarize(other, n_old, average).items()})
    for name, value in zip(class_names, main.iou()):
        row[f"iou.{name}"] = float(value)
    return row


