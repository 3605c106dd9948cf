"""The result-row schema as the analysis sees it: id columns, metrics, config knobs and their defaults.

A row (``wilss.results.make_row``) holds the id columns below, every flat config key under its dotted
name (``pseudo.n_seeds``, ``fmwiss.lambda_dcl``, ...), the metrics of ``wilss.metrics`` as fractions in
[0, 1], per-class IoU (``iou.<class>``), pseudo-label quality (``pseudo.miou_*``), timings (``time.*``),
cache counters (``cache.*``) and provenance. Columns this module does not name are kept and ignored.
"""

from __future__ import annotations

import functools

SCHEMA_VERSIONS = (1,)  # the row versions this package reads

ID_COLUMNS = ("schema_version", "sweep", "trial_id", "method", "dataset", "task", "overlap", "step", "seed")
REQUIRED = (*ID_COLUMNS, "miou_all")

# Metrics of one step (METHOD.md §2): "old" = step-0 classes, "new" = classes of steps 1..t (cumulative).
# miou_old and miou_all include background (DKD convention); *_nobg leave it out (WILSON's "1-15").
METRICS = ("miou_all", "miou_old", "miou_new", "miou_old_nobg", "miou_all_nobg", "hiou")
# the pseudo masks' quality, and two masks that know only the image labels (all ones, a random half)
PSEUDO_METRICS = ("pseudo.miou_init", "pseudo.miou_seeds", "pseudo.miou_fused", "pseudo.miou_ones",
                  "pseudo.miou_random")
METRIC_LABELS = {"miou_all": "all", "miou_old": "old", "miou_new": "new", "miou_old_nobg": "old",
                 "miou_all_nobg": "all (no bg)", "hiou": "hIoU", "pseudo.miou_init": "M_init",
                 "pseudo.miou_seeds": "M_seeds", "pseudo.miou_fused": "M_fm (fused)",
                 "pseudo.miou_ones": "all-ones mask", "pseudo.miou_random": "random mask"}

# The two column conventions of the field's tables (METHOD.md §2, §7.3). A convention is the triple of
# row metrics shown as old / new / all (plus hIoU for DKD), and the sentence the caption states.
CONVENTIONS = {
    "wilson": {"old": "miou_old_nobg", "new": "miou_new", "all": "miou_all"},
    "dkd": {"old": "miou_old", "new": "miou_new", "all": "miou_all", "hIoU": "hiou"},
}
CONVENTION_TEXT = {
    "wilson": "WILSON/FMWISS convention (METHOD.md §2): old = mean IoU of the step-0 classes without "
              "background (their '1-15'), new = classes added in steps 1..t, all = mean over every seen "
              "class including background (not the weighted mean of old and new).",
    "dkd": "DKD/PLOP/SSUL convention (METHOD.md §2): old = step-0 classes including background "
           "('0-15'), new = classes added in steps 1..t, all = every seen class including background, "
           "hIoU = 2·old·new/(old+new).",
}

# Config sections: a column "<section>.<field>" is a knob (the config's own dotted name).
SECTIONS = ("data", "model", "train", "eval", "foundation", "pseudo", "fmwiss", "dkd", "mib", "wilson")

# Knobs that repeat an id column, or change where and how fast a run goes but not its result: never an
# ablation dimension.
INERT = frozenset({
    "data.dataset", "data.task", "data.overlap", "train.seed", "data.root", "data.cache_dir",
    "data.loader_workers", "train.device", "train.log_every", "eval.batch_size", "foundation.batch_size",
})

# The FMWISS ablations of the paper (METHOD.md §5.8, §6.2), each a group of knobs varied together.
ABLATIONS = {
    "n_seeds": ("pseudo.n_seeds",),
    "fusion": ("pseudo.fusion",),
    "lambda": ("fmwiss.lambda_dcl",),
    "alpha_beta": ("fmwiss.alpha", "fmwiss.beta"),
    "components": ("fmwiss.teacher", "fmwiss.dcl", "fmwiss.copy_paste", "pseudo.fusion"),  # fusion none: no seeds
}
ABLATION_TITLES = {"n_seeds": "Seed count N", "fusion": "Fusion of M_init and M_seeds",
                   "lambda": "Dense contrastive loss weight λ", "alpha_beta": "α × β",
                   "components": "Components on/off"}


def is_knob(column: str) -> bool:
    """A config key (``pseudo.n_seeds``), not a metric that shares its section (``pseudo.miou_init``)."""
    return "." in column and column.split(".", 1)[0] in SECTIONS and column not in PSEUDO_METRICS


@functools.lru_cache(maxsize=1)
def config_defaults() -> dict:
    """``{"pseudo.n_seeds": 9, ...}``: the config's defaults, which are the paper's (METHOD.md §5.6).

    Read from ``wilss.config`` (pure dataclasses; importing it pulls in neither torch nor ray, which
    ``tests/test_analysis.py`` checks), so the default of a knob has one home.
    """
    from wilss.config import Config, flatten

    return flatten(Config())


def default_of(knob: str):
    """The default value of a knob, or None for a column the installed config does not know."""
    return config_defaults().get(knob)
