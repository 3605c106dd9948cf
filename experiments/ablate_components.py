"""Component ablation of FMWISS: the plug-in teacher, the dense contrastive loss, the memory copy-paste
and the seed guidance switched on and off (METHOD.md §5.2-§5.5; the paper's component ablation table).

    python experiments/ablate_components.py                 # synthetic 10-5, 16 trials
    python experiments/ablate_components.py --preset voc-fmwiss --data-root /data/VOC2012 --tasks 15-5 --repeats 3

Grid: fmwiss.teacher x fmwiss.dcl x fmwiss.copy_paste in {true, false} x pseudo.fusion in {union, none}
(none: M_init alone, no seed guidance) x tasks x seeds (the DCL lives on the teacher's embeddings, so
with the teacher off its switch changes nothing); step 0 is shared by all trials.
"""

import sys

from wilss.launch.experiment import SYNTHETIC_FMWISS, Experiment, main

EXPERIMENT = Experiment(
    name="ablate_components", doc=__doc__,
    grid={"fmwiss.teacher": [True, False], "fmwiss.dcl": [True, False], "fmwiss.copy_paste": [True, False],
          "pseudo.fusion": ["union", "none"]},
    synthetic=SYNTHETIC_FMWISS,
)

if __name__ == "__main__":
    sys.exit(main(EXPERIMENT))
