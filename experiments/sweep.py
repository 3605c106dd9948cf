"""Hyperparameter search for FMWISS with Optuna (TPE) on Ray Tune: λ, α, β, N and the fusion type,
plus any config key given with --space (METHOD.md §5.6; the paper's defaults are the first trial).

    python experiments/sweep.py                             # synthetic 10-5, 12 trials
    python experiments/sweep.py --space train.lr_next=1e-4:1e-2:log --space fmwiss.tau=0.05,0.1,0.2
    python experiments/sweep.py --tasks 10-5,5-5 --objective mean --optuna-storage sqlite:///runs/study.db
    python experiments/sweep.py --preset voc-fmwiss --data-root /data/VOC2012 --tasks 15-5,10-10 --trials 64 \\
        --workers 4 --gpus-per-trial 4 --scheduler asha --storage s3://bucket/wilss

Default space: fmwiss.lambda_dcl in [0.01, 1] (log), fmwiss.alpha in [0, 1], fmwiss.beta in [0.5, 1],
pseudo.fusion in {union, intersection, none}, pseudo.n_seeds in [1, 25] (sampled only when fusion is
not none). --objective per-task runs one study per task; mean scores each trial by the mean final
mIoU over the tasks. --repeats N: afterwards, the best point again with N seeds (sweep <name>-best). Mistakes in the space (unknown key, bounds outside a knob's range, a value a knob
does not take) stop the script before any trial starts.
"""

import sys

from wilss.launch.experiment import SYNTHETIC_FMWISS, Experiment, main
from wilss.launch.space import PAPER_SPACE

EXPERIMENT = Experiment(
    name="sweep", doc=__doc__, space=PAPER_SPACE, trials=12,
    synthetic=SYNTHETIC_FMWISS,
)

if __name__ == "__main__":
    sys.exit(main(EXPERIMENT))
