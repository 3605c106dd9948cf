import numpy as np

from wilss.data import classes
from wilss.data.labels import FUTURE, IGNORE, eval_lut, train_lut
from wilss.data.splits import train_indices
from wilss.data.tasks import TASKS, get_task


def test_registry_covers_the_protocols():
    for dataset, name, n_steps in [("voc", "19-1", 2), ("voc", "15-5", 2), ("voc", "15-1", 6), ("voc", "10-10", 2),
                                   ("voc", "10-1", 11), ("voc", "5-3", 6), ("ade", "100-50", 2),
                                   ("ade", "100-10", 6), ("ade", "50-50", 3), ("ade", "100-5", 11),
                                   ("coco-voc", "coco-to-voc", 2), ("synthetic", "10-5", 2),
                                   ("synthetic", "10-1", 6)]:
        assert get_task(dataset, name).n_steps == n_steps
    for task in TASKS.values():  # every class of the dataset appears exactly once (19-1b: reordered)
        ids = [c for s in task.steps for c in s]
        assert len(ids) == len(set(ids)) and 0 not in ids


def test_coco_to_voc_task_order_packs_ids():
    task = get_task("coco-voc", "coco-to-voc")
    assert len(task.steps[0]) == 60 and sorted(task.steps[1]) == sorted(classes.VOC_TO_COCO[1:])
    assert all(classes.COCO[c] is not None for c in task.order[1:])
    lut = eval_lut(task, 1)
    assert lut[task.order[61]] == 61 and lut[1] == task.order.index(1)  # person


def test_train_lut_void_policies_and_old_future():
    task = get_task("voc", "15-5")
    lut = train_lut(task, 1, "bg")
    assert lut[16] == 16 and lut[3] == 0 and lut[255] == 0
    assert train_lut(task, 1, "ignore")[255] == IGNORE
    assert train_lut(task, 1, "negative", negative_value=0)[255] == 0
    assert train_lut(task, 1, "negative", negative_value=IGNORE)[255] == IGNORE
    assert train_lut(task, 1, "bg", keep_old=True)[3] == 3
    step0 = train_lut(task, 0, "bg")
    assert step0[20] == 0 and step0[15] == 15  # future -> background in training


def test_test_lut_marks_future():
    lut = eval_lut(get_task("voc", "15-5"), 0)
    assert lut[20] == FUTURE and lut[15] == 15 and lut[255] == IGNORE and lut[0] == 0


def test_split_rule_disjoint_vs_overlap():
    task = get_task("voc", "15-5")
    present = np.zeros((4, 21), bool)
    present[0, [3]] = True  # old only
    present[1, [3, 17]] = True  # old + new
    present[2, [17]] = True  # new only
    present[3, [3, 18]] = True  # at step 0, 18 is future
    assert train_indices(present, task, 0, overlap=True).tolist() == [0, 1, 3]
    assert train_indices(present, task, 0, overlap=False).tolist() == [0]
    assert train_indices(present, task, 1, overlap=True).tolist() == [1, 2, 3]
    assert train_indices(present, task, 1, overlap=False).tolist() == [1, 2, 3]  # last step: identical
