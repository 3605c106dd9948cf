"""Dense-contrastive-loss weight ablation of FMWISS: mIoU as a function of λ (fmwiss.lambda_dcl)
(METHOD.md §5.3, §5.8; the paper's λ ablation table: λ = 0 is worse, 0.1 is chosen).

    python experiments/ablate_lambda.py                     # synthetic 10-5, 4 trials
    python experiments/ablate_lambda.py --preset voc-fmwiss --data-root /data/VOC2012 --tasks 15-5 --repeats 3

Grid: fmwiss.lambda_dcl in {0, 0.05, 0.1, 0.2} x tasks x seeds (λ = 0: the DCL off); step 0 is shared by
all trials.
"""

import sys

from wilss.launch.experiment import SYNTHETIC_FMWISS, Experiment, main

EXPERIMENT = Experiment(
    name="ablate_lambda", doc=__doc__, grid={"fmwiss.lambda_dcl": [0.0, 0.05, 0.1, 0.2]},
    synthetic=SYNTHETIC_FMWISS,
)

if __name__ == "__main__":
    sys.exit(main(EXPERIMENT))
