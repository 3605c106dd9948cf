"""wilss: weakly incremental semantic segmentation (FMWISS, DKD and the field's baselines).

Importing the package is cheap and never imports ray: Ray lives only in ``wilss.launch``.
"""

__version__ = "0.1.0"
