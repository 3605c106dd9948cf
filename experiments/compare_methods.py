"""Methods x tasks: every registered method (finetune and joint bounds, MiB, WILSON, DKD, DKD-M,
FMWISS) on the same tasks, seeds and data (METHOD.md §6; the main comparison tables).

    python experiments/compare_methods.py                   # synthetic 10-5, every method
    python experiments/compare_methods.py --methods finetune,fmwiss --tasks 10-5,5-5 --repeats 3
    python experiments/compare_methods.py --preset voc --data-root /data/VOC2012 --tasks 15-5,15-1,10-10

Grid: method x tasks x seeds, on one preset (so the methods share the data, student and schedule;
use a method's paper preset, e.g. --preset voc-dkd, to run it with its own settings).
"""

import sys

from wilss.launch.experiment import SYNTHETIC_FMWISS, Experiment, main
from wilss.methods import METHODS

EXPERIMENT = Experiment(
    name="compare_methods", doc=__doc__, grid={"method": sorted(METHODS)}, methods_flag=True,
    synthetic=SYNTHETIC_FMWISS,
)

if __name__ == "__main__":
    sys.exit(main(EXPERIMENT))
