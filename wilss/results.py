"""Result rows: one per (trial, step), a fixed versioned schema, written atomically to Parquet.

Columns (DESIGN.md "Results"): ``schema_version``, ``sweep``, ``trial_id``, ``method``, ``dataset``,
``task``, ``overlap``, ``step``, ``seed``, every flat config key (``train.lr``, ...), the metrics of
``wilss.metrics.step_metrics`` (``miou_all``, ..., ``iou.<class>``), timings (``time.*``) and
provenance (``git_sha``, ``version.*``, ``device``, ``node``).
"""

from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path
from typing import Any

from wilss import __version__
from wilss.atomic import atomic_path
from wilss.config import Config, flatten

SCHEMA_VERSION = 1


@functools.lru_cache(maxsize=1)
def provenance() -> dict[str, str]:
    import numpy
    import torch
    import torchvision

    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return {"git_sha": sha or "unknown", "version.wilss": __version__, "version.torch": torch.__version__,
            "version.torchvision": torchvision.__version__, "version.numpy": numpy.__version__,
            "node": platform.node()}


def make_row(cfg: Config, *, step: int, metrics: dict[str, float], timings: dict[str, float],
             sweep: str = "", trial_id: str = "", device: str = "cpu", extra: dict | None = None) -> dict:
    row: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "sweep": sweep, "trial_id": trial_id, "method": cfg.method,
        "dataset": cfg.data.dataset, "task": cfg.data.task, "overlap": cfg.data.overlap, "step": step,
        "seed": cfg.train.seed,
    }
    row.update({k: v for k, v in flatten(cfg).items() if k != "method"})
    row.update(metrics)
    row.update({f"time.{k}": v for k, v in timings.items()})
    row.update(extra or {})
    row.update(provenance())
    row["device"] = device
    return row


def write_row(row: dict, path: Path) -> None:
    """Write one row as a Parquet file: temp file in the same folder, then rename (atomic)."""
    import pandas as pd

    with atomic_path(path) as tmp:
        pd.DataFrame([row]).to_parquet(tmp, index=False)


def read_rows(folder: str | Path):
    """All rows under ``folder`` (one Parquet file per row) as a DataFrame, in step order."""
    import pandas as pd

    files = sorted(Path(folder).rglob("*.parquet"))
    if not files:
        return pd.DataFrame()
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True).sort_values(
        ["trial_id", "step"], kind="stable").reset_index(drop=True)
