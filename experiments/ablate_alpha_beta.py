"""α / β ablation of FMWISS: how the student's targets blend hard and soft teacher labels for new
classes (α) and the previous model and the teacher for old classes (β) (METHOD.md §5.5, §7.17; a
two-knob grid, drawn as a heat map by the analysis package).

    python experiments/ablate_alpha_beta.py                 # synthetic 10-5, 9 trials
    python experiments/ablate_alpha_beta.py --preset voc-fmwiss --data-root /data/VOC2012 --tasks 15-5

Grid: fmwiss.alpha in {0.25, 0.5, 0.75} x fmwiss.beta in {0.7, 0.9, 1.0} x tasks x seeds; step 0 is
shared by all trials.
"""

import sys

from wilss.launch.experiment import SYNTHETIC_FMWISS, Experiment, main

EXPERIMENT = Experiment(
    name="ablate_alpha_beta", doc=__doc__,
    grid={"fmwiss.alpha": [0.25, 0.5, 0.75], "fmwiss.beta": [0.7, 0.9, 1.0]},
    synthetic=SYNTHETIC_FMWISS,
)

if __name__ == "__main__":
    sys.exit(main(EXPERIMENT))
