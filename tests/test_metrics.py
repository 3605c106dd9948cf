import math

import torch

from wilss.data.labels import FUTURE, IGNORE
from wilss.metrics import ConfusionMatrix, StepEvaluator, step_metrics, summarize


def test_iou_by_hand():
    cm = ConfusionMatrix(3)
    target = torch.tensor([[0, 0, 1, 1, 2, IGNORE]])
    pred = torch.tensor([[0, 1, 1, 1, 0, 2]])
    cm.update(pred, target)
    # class 0: tp 1, fp 1 (the 2 predicted 0), fn 1 -> 1/3; class 1: tp 2, fp 1 -> 2/3; class 2: 0/1
    assert torch.allclose(torch.tensor(cm.iou()), torch.tensor([1 / 3, 2 / 3, 0.0]).double())
    s = summarize(cm, n_old=2)
    assert math.isclose(s["miou_old"], 0.5) and math.isclose(s["miou_new"], 0.0)
    assert math.isclose(s["miou_old_nobg"], 2 / 3) and math.isclose(s["miou_all"], 1 / 3)
    assert s["hiou"] == 0.0


def test_average_conventions():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([[0, 1]]), torch.tensor([[0, 1]]))  # class 2 absent everywhere
    assert math.isclose(summarize(cm, 1, "present")["miou_all"], 1.0)  # WILSON: absent skipped
    assert math.isclose(summarize(cm, 1, "all")["miou_all"], 2 / 3)  # DKD: absent counts 0


def test_future_pixels_scored_both_ways():
    ev = StepEvaluator(2)
    ev.update(torch.tensor([[0, 1, 0]]), torch.tensor([[0, 1, FUTURE]]))
    row = step_metrics(ev, 2, ("background", "cat"), "ignore", "present")
    assert row["miou_all"] == 1.0  # future pixel ignored
    assert row["future_bg.miou_all"] == 1.0  # future pixel as bg, predicted bg: still right
    ev.update(torch.tensor([[1]]), torch.tensor([[FUTURE]]))
    row = step_metrics(ev, 2, ("background", "cat"), "bg", "present")
    assert row["miou_all"] < 1.0 and row["future_ignore.miou_all"] == 1.0
    assert row["iou.cat"] < 1.0
