"""Fusion ablation of FMWISS: the refined mask M_init ∪ M_seeds (union), M_init ∩ M_seeds
(intersection) or M_init alone (none) (METHOD.md §5.2, §5.8; the paper's fusion ablation table).

    python experiments/ablate_fusion.py                     # synthetic 10-5, 3 trials
    python experiments/ablate_fusion.py --preset voc-fmwiss --data-root /data/VOC2012 --tasks 15-5,10-10 --repeats 3

Grid: pseudo.fusion in {union, intersection, none} x tasks x seeds; step 0 is shared by all trials.
"""

import sys

from wilss.launch.experiment import SYNTHETIC_FMWISS, Experiment, main

EXPERIMENT = Experiment(
    name="ablate_fusion", doc=__doc__, grid={"pseudo.fusion": ["union", "intersection", "none"]},
    synthetic=SYNTHETIC_FMWISS,
)

if __name__ == "__main__":
    sys.exit(main(EXPERIMENT))
