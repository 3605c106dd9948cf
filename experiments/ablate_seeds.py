"""Seed-count ablation of FMWISS: mIoU as a function of N, the number of seed points per class
(METHOD.md §5.2, §5.8; the paper's seed-count ablation table and its Fig. 5).

    python experiments/ablate_seeds.py                      # synthetic 10-5, 6 trials, laptop CPU
    python experiments/ablate_seeds.py --repeats 3          # 3 seeds per N
    RAY_ADDRESS=http://head:8265 python experiments/ablate_seeds.py --preset voc-fmwiss --data-root /data/VOC2012 \\
        --tasks 15-5,10-10 --repeats 3 --workers 4 --gpus-per-trial 4 --storage s3://bucket/wilss

Grid: pseudo.n_seeds in {1, 3, 5, 9, 15, 25} x tasks x seeds. Step 0 does not depend on N: it is
trained once and shared by every trial (see the ``cache.step_hit`` column). Rows land in
<storage>/results/sweep=ablate_seeds/; the closing table is the mean over seeds per N.
"""

import sys

from wilss.launch.experiment import SYNTHETIC_FMWISS, Experiment, main

# On the synthetic preset the incremental steps are shorter (SYNTHETIC_FMWISS: 3 epochs, 1 of teacher
# warm-up), so the default sweep takes minutes on two CPU cores; other presets keep their schedules.
EXPERIMENT = Experiment(
    name="ablate_seeds", doc=__doc__, grid={"pseudo.n_seeds": [1, 3, 5, 9, 15, 25]},
    synthetic=SYNTHETIC_FMWISS,
)

if __name__ == "__main__":
    sys.exit(main(EXPERIMENT))
