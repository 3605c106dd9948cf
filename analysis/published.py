"""Published numbers (METHOD.md §6) as data, each with its source, for the reference rows of the main
comparison tables. Values are mIoU in percent as printed; None where the source gives nothing.

Not here, on purpose: FMWISS's ablation tables (§6.2: not recovered, only qualitative findings), its
old/new columns and COCO-to-VOC row, cells the DKD README prints corrupted (10-1 of MiB, PLOP and SSUL)
and the unverified Joint rows of §6.3.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class Published:
    dataset: str
    task: str
    overlap: bool | None  # None: the protocol has no disjoint/overlap variant (COCO-to-VOC)
    method: str  # as the paper prints it
    convention: str  # "wilson", "recall" (All = weighted mean of old and new) or "dkd"; see schema.CONVENTIONS
    old: float | None
    new: float | None
    all: float | None
    hiou: float | None = None
    source: str = ""
    supervision: str = ""  # "pixel" or "image" labels at the incremental steps
    unsure: bool = False  # METHOD.md flags the value as UNSURE
    note: str = ""


# Our method names (the result rows' ``method``) for the papers' row names.
OURS = {"Joint": "joint", "FT": "finetune", "MiB": "mib", "WILSON": "wilson", "FMWISS": "fmwiss", "DKD": "dkd",
        "DKD-M": "dkd-m"}


def _wilson_table(text: str, dataset: str, task: str, source: str) -> list[Published]:
    """Rows 'name sup dj-old dj-new dj-all ov-old ov-new ov-all'; '*' = copied from RECALL (its own All),
    '+' = copied from PLOP; '-' = not given."""
    out = []
    for line in text.strip().splitlines():
        name, sup, *vals = line.split()
        nums = [None if v == "-" else float(v) for v in vals]
        conv = "recall" if name.endswith("*") else "wilson"
        note = {"*": "copied by WILSON from RECALL", "+": "copied by WILSON from PLOP"}.get(name[-1], "")
        name = name.rstrip("*+")
        for overlap, (o, n, a) in ((False, nums[:3]), (True, nums[3:])):
            out.append(Published(dataset, task, overlap, name, conv, o, n, a, source=source, supervision=sup,
                                 note=note))
    return out


_T1 = """
Joint* pixel 75.5 73.5 75.4 75.5 73.5 75.4
FT* pixel 8.4 33.5 14.4 12.5 36.9 18.3
LWF* pixel 39.7 33.3 38.2 67.0 41.8 61.0
LWF-MC* pixel 41.5 25.4 37.6 59.8 22.6 51.0
ILT* pixel 31.5 25.1 30.0 69.0 46.4 63.6
CIL* pixel 42.6 35.0 40.8 14.9 37.3 20.2
MiB* pixel 71.8 43.3 64.7 75.5 49.4 69.0
PLOP+ pixel 71.0 42.8 64.3 75.7 51.7 70.1
SDR* pixel 73.5 47.3 67.2 75.4 52.6 69.9
RECALL* pixel 69.2 52.9 66.3 67.7 54.3 65.6
CAM image 69.3 26.1 59.4 69.9 25.6 59.7
SEAM image 71.0 33.1 62.7 68.3 31.8 60.4
SS image 71.6 26.0 61.5 72.2 27.5 62.1
EPS image 72.4 38.5 65.2 69.4 34.5 62.1
WILSON image 73.6 43.8 67.3 74.2 41.7 67.2
"""

_T2 = """
Joint* pixel 76.6 74.0 75.4 76.6 74.0 75.4
FT* pixel 7.7 60.8 33.0 7.8 58.9 32.1
LWF* pixel 63.1 61.1 62.2 70.7 63.4 67.2
LWF-MC* pixel 52.4 42.5 47.7 53.9 43.0 48.7
ILT* pixel 67.7 61.3 64.7 70.3 61.9 66.3
CIL* pixel 37.4 60.6 48.8 38.4 60.0 48.7
MiB* pixel 66.9 57.5 62.4 70.4 63.7 67.2
PLOP pixel 63.7 60.2 63.4 69.6 62.2 67.1
SDR* pixel 67.5 57.9 62.9 70.5 63.9 67.4
RECALL* pixel 64.1 56.9 61.9 66.0 58.8 63.7
CAM image 65.4 41.3 54.5 70.8 44.2 58.5
SEAM image 65.1 53.5 60.6 67.5 55.4 62.7
SS image 60.7 25.7 45.0 69.6 32.8 52.5
EPS image 64.2 54.1 60.6 69.0 57.0 64.3
WILSON image 64.5 54.3 60.8 70.4 57.1 65.0
"""

_T3 = """
FT pixel 1.9 41.7 12.7
LWF pixel 36.7 49.0 40.3
ILT pixel 37.0 43.9 39.3
MiB pixel 34.9 47.8 38.7
PLOP pixel 35.1 39.4 36.8
CAM image 30.7 20.3 28.1
SEAM image 31.2 28.2 30.5
SS image 35.1 36.9 35.5
EPS image 34.9 38.4 35.8
WILSON image 39.8 41.0 40.6
"""

_W = "WILSON (CVPR'22) Tab. {}"
WILSON_ROWS = (
    _wilson_table(_T1, "voc", "15-5", _W.format(1)) + _wilson_table(_T2, "voc", "10-10", _W.format(2))
    + [Published("coco-voc", "coco-to-voc", None, n, "wilson", *map(float, v), source=_W.format(3),
                 supervision=s, note="COCO columns (1-60 / 61-80 / All)")
       for n, s, *v in (line.split() for line in _T3.strip().splitlines())]
)

FMWISS_ROWS = [
    Published("voc", "15-5", False, "FMWISS", "wilson", None, None, 70.7, source="FMWISS (CVPR'23) abstract",
              supervision="image"),
    Published("voc", "15-5", True, "FMWISS", "wilson", None, None, 73.3, source="FMWISS (CVPR'23) abstract",
              supervision="image"),
    Published("voc", "10-10", False, "FMWISS", "wilson", None, None, 64.6, source="Web-WILSS (ECCV'24) table",
              supervision="image", unsure=True),
    Published("voc", "10-10", True, "FMWISS", "wilson", None, None, 69.1, source="Web-WILSS (ECCV'24) table",
              supervision="image", unsure=True),
    Published("voc", "15-5", True, "RaSP", "wilson", None, None, 70.0, source="Web-WILSS (ECCV'24) table",
              supervision="image"),
    Published("voc", "10-10", True, "RaSP", "wilson", None, None, 65.9, source="Web-WILSS (ECCV'24) table",
              supervision="image"),
]


def _dkd_table(text: str, dataset: str, overlap: bool, tasks: list[str], source: str, note: str) -> list[Published]:
    """Rows 'name hIoU/all/old/new per task'; '-' = not given. old/new are derived (METHOD.md §6.3)."""
    out = []
    for line in text.strip().splitlines():
        name, *cells = line.split()
        for task, cell in zip(tasks, cells):
            if cell == "-":
                continue
            h, a, o, n = (None if v == "-" else float(v) for v in cell.split("/"))
            out.append(Published(dataset, task, overlap, name, "dkd", o, n, a, hiou=h, source=source,
                                 supervision="pixel", note=note))
    return out


_DKD_VOC = """
MiB 33.62/67.80/70.1/22.1 59.72/69.00/75.1/49.6 19.50/29.70/34.8/13.6 - 48.77/46.71/57.2/42.5
SDR 44.30/67.40/69.1/32.6 61.97/69.90/75.3/52.7 29.31/39.20/44.6/21.8 - -
PLOP 49.94/73.54/75.4/37.4 61.46/70.09/75.9/51.7 31.88/54.64/65.1/21.1 - 18.28/18.68/17.5/19.2
SSUL 42.96/75.44/77.7/29.7 60.96/71.22/77.8/50.1 49.67/67.61/77.3/36.6 - 59.63/56.89/72.4/50.7
DKD 54.03/76.03/77.8/41.4 66.98/73.93/78.8/58.2 55.21/69.67/78.1/42.7 56.84/60.44/73.1/46.5 60.49/58.10/69.5/53.5
SSUL-M 60.71/76.49/77.8/49.8 65.20/73.02/78.4/55.8 60.30/71.37/78.4/49.0 61.93/64.12/74.0/53.2 60.93/58.37/71.3/53.2
DKD-M 66.27/77.01/78.0/57.6 68.63/74.72/79.1/60.6 62.91/72.53/78.8/52.3 64.19/65.77/74.1/56.6 64.63/62.94/69.7/60.2
"""

_DKD_VOC_DISJOINT = """
DKD 57.98/75.90/77.4/46.4 64.35/72.21/77.6/55.0 54.21/68.48/76.8/41.9
DKD-M 67.12/76.84/-/- 65.04/72.53/-/- 60.32/70.78/-/-
"""

_DKD_ADE = """
MiB 24.12/32.79/40.5/17.2 17.23/29.24/38.2/11.1 28.76/29.31/45.6/21.0
PLOP 21.97/32.94/41.9/14.9 20.37/31.59/40.5/13.6 29.36/30.40/48.9/21.0
SSUL 25.09/33.58/41.3/18.0 25.57/33.10/40.2/18.7 28.45/29.56/47.8/20.2
DKD 29.74/35.95/42.4/22.9 26.55/34.26/41.6/19.5 34.17/33.90/48.9/26.3
SSUL-M 24.88/34.37/42.7/17.6 25.01/34.46/42.8/17.7 28.53/29.77/48.5/20.2
DKD-M 29.79/35.98/42.4/23.0 27.14/34.58/41.7/20.1 34.19/33.92/48.9/26.3
"""

_DERIVED = "old/new derived from hIoU and all (METHOD.md §6.3)"
DKD_ROWS = (
    _dkd_table(_DKD_VOC, "voc", True, ["19-1", "15-5", "15-1", "10-1", "5-3"],
               "DKD (NeurIPS'22) README table, mean of 5 runs", _DERIVED)
    + _dkd_table(_DKD_VOC_DISJOINT, "voc", False, ["19-1", "15-5", "15-1"],
                 "DKD README, released checkpoint (1 run)", _DERIVED)
    + _dkd_table(_DKD_ADE, "ade", True, ["100-50", "100-10", "50-50"],
                 "DKD (NeurIPS'22) README table, mean of 5 runs", _DERIVED)
)

PUBLISHED: tuple[Published, ...] = (*WILSON_ROWS, *FMWISS_ROWS, *DKD_ROWS)


def published_frame(dataset: str | None = None, task: str | None = None) -> pd.DataFrame:
    """The published rows (optionally of one dataset and task) as a DataFrame, one row per Published."""
    rows = [p for p in PUBLISHED if (dataset is None or p.dataset == dataset) and (task is None or p.task == task)]
    return pd.DataFrame([p.__dict__ for p in rows], columns=list(Published.__dataclass_fields__))
