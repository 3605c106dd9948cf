"""The Ray sweep runner: the only part of wilss that imports ray.

- ``steps``: walk a run's steps, each built once (``wilss.artifacts``) and recorded as one row.
- ``train``: one step = one Ray Train ``TorchTrainer.fit()`` on N workers (``wilss run --workers N``).
- ``trial``: the Tune trial that drives one (config, seed) run; ``sweep``: the Tune experiment
  (grid or Optuna) around it; ``space``: search spaces in the config's dotted names.
- ``storage``: where rows, Ray state and artifacts go (a local folder or a pyarrow URI).
- ``cluster``: attach to a Ray cluster or start a local one; ``progress``: the running report.
- ``experiment``: the shared command line of ``experiments/*.py``.
"""

import os as _os

# A local Ray (no RAY_ADDRESS: not a job on a cluster) binds every server to 127.0.0.1 (RAY.md §1).
# Ray reads this when it is imported, so it is set here, before any launch module imports ray.
if not _os.environ.get("RAY_ADDRESS"):
    _os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
