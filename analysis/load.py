"""Read result datasets (one or many sweeps; local folders, files or pyarrow filesystem URIs) and
validate them against the result schema (``analysis.schema``).

``read_results(["runs/sweeps/results"])`` -> one tidy DataFrame, one row per (sweep, trial, task, step),
with a ``file`` column naming where each row came from. Every problem raises ``ResultsError`` naming the
file or column and the fix.
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from analysis.schema import INERT, METRICS, PSEUDO_METRICS, REQUIRED, SCHEMA_VERSIONS, is_knob


class ResultsError(ValueError):
    """Results that cannot be read or do not follow the schema; the message names the fix."""


# --------------------------------------------------------------------------------------------------
# finding the files


def _filesystem(source: str) -> tuple[pafs.FileSystem, str]:
    if "://" in source and not source.startswith("file://"):
        try:
            return pafs.FileSystem.from_uri(source)
        except Exception as e:  # pyarrow raises several types for a bad or unsupported URI
            raise ResultsError(f"cannot open {source}: {e}") from e
    from pathlib import Path

    return pafs.LocalFileSystem(), str(Path(source.removeprefix("file://")).expanduser().resolve())


def list_files(source: str) -> tuple[pafs.FileSystem, list[str]]:
    """The Parquet files under ``source`` (a file, or a folder searched recursively; hidden and temporary
    files, e.g. a half-written ``.step=1.parquet.xyz.tmp``, are skipped)."""
    fs, path = _filesystem(source)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return fs, [path]
    if info.type != pafs.FileType.Directory:
        raise ResultsError(f"no such file or folder: {source}; give a results folder (e.g. runs/sweeps/results "
                           f"or runs/sweeps/results/sweep=<name>) or a Parquet file")
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    files = sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet")
                   and not i.base_name.startswith("."))
    if not files:
        raise ResultsError(f"{source} holds no .parquet result files; point at <storage>/results or at one "
                           f"sweep=<name> folder in it")
    return fs, files


def _read_one(fs: pafs.FileSystem, path: str) -> pd.DataFrame:
    try:
        df = pq.read_table(path, filesystem=fs).to_pandas()
    except Exception as e:  # ArrowInvalid, OSError, ...: a truncated or foreign file
        raise ResultsError(f"{path}: not a readable Parquet file ({e}); delete it (a sweep rerun rewrites a "
                           f"missing row) or move it out of the results folder") from e
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ResultsError(f"{path}: missing column(s) {', '.join(missing)}; not a wilss result row "
                           f"(rows come from wilss.results.make_row); move the file out of the results folder")
    df["file"] = path
    return df


# --------------------------------------------------------------------------------------------------
# reading and validating


def read_results(sources, *, threads: int = 8) -> pd.DataFrame:
    """All rows under ``sources`` (paths or URIs), validated; sorted by sweep, task, trial and step."""
    if isinstance(sources, str):
        sources = [sources]
    jobs: dict[str, pafs.FileSystem] = {}  # path -> filesystem; a file given twice is read once
    for source in sources:
        fs, files = list_files(str(source))
        for f in files:
            jobs.setdefault(f, fs)
    if not jobs:
        raise ResultsError("no result sources given")
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(jobs)))) as pool:
        frames = list(pool.map(lambda item: _read_one(item[1], item[0]), jobs.items()))
    with warnings.catch_warnings():  # empty/all-NaN columns in some files: concat keeps them as object
        warnings.simplefilter("ignore", FutureWarning)
        df = pd.concat(frames, ignore_index=True)
    return validate(df)


def validate(df: pd.DataFrame) -> pd.DataFrame:
    """Check the rows against the schema; return them with normalised id columns and missing optional
    metric columns added as NaN. Unknown extra columns are kept."""
    df = df.copy()
    if "file" not in df.columns:
        df["file"] = "<memory>"
    for col in REQUIRED:
        if col not in df.columns:
            raise ResultsError(f"column '{col}' is missing; result rows come from wilss.results.make_row")
    bad = ~df["schema_version"].isin(SCHEMA_VERSIONS)
    if bad.any():
        r = df[bad].iloc[0]
        raise ResultsError(f"{r['file']}: schema_version {r['schema_version']!r}, this analysis reads "
                           f"{', '.join(map(str, SCHEMA_VERSIONS))}; update wilss (pip install -e .) or read "
                           f"the rows with the wilss version that wrote them")
    for col in ("step", "seed"):
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values.isna() | (values != np.floor(values))
        if bad.any():
            r = df[bad].iloc[0]
            raise ResultsError(f"{r['file']}: column '{col}' must be an integer, got {r[col]!r}")
        df[col] = values.astype("int64")
    df["overlap"] = df["overlap"].map(_as_bool(df))
    for col in ("sweep", "trial_id", "method", "dataset", "task"):
        df[col] = df[col].fillna("").astype(str)
    # Rows of a single `wilss run` (no sweep) carry no trial id: their folder names the run.
    lone = df["trial_id"] == ""
    df.loc[lone, "trial_id"] = df.loc[lone, "file"].map(lambda p: p.rsplit("/", 1)[0])
    for col in (*METRICS, *PSEUDO_METRICS):
        if col not in df.columns:
            df[col] = np.nan
    for col in [c for c in df.columns if c in METRICS or c in PSEUDO_METRICS or c.startswith("iou.")]:
        values = pd.to_numeric(df[col], errors="coerce")
        if (values.isna() & df[col].notna()).any():
            r = df[values.isna() & df[col].notna()].iloc[0]
            raise ResultsError(f"{r['file']}: column '{col}' must be numeric, got {r[col]!r}")
        out = (values < 0) | (values > 1)
        if out.any():
            r = df[out].iloc[0]
            raise ResultsError(f"{r['file']}: column '{col}' = {r[col]} is outside [0, 1]; metrics are "
                               f"stored as fractions (the tables print percent), not percentages")
        df[col] = values.astype("float64")
    key = ["sweep", "trial_id", "task", "step"]
    dup = df.duplicated(key, keep=False)
    if dup.any():
        d = df[dup].sort_values(key)
        raise ResultsError(f"the row (sweep, trial, task, step) = {tuple(d.iloc[0][key])} is in two files: "
                           f"{d.iloc[0]['file']} and {d.iloc[1]['file']}; give each sweep once (not both "
                           f"results/ and results/sweep=<name>), or remove the stray copy")
    return df.sort_values(["sweep", "task", "trial_id", "step"], kind="stable").reset_index(drop=True)


def _as_bool(df: pd.DataFrame):
    def conv(v):
        if isinstance(v, (bool, np.bool_)):
            return bool(v)
        low = str(v).strip().lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        bad = df[df["overlap"].astype(str) == str(v)].iloc[0]
        raise ResultsError(f"{bad['file']}: column 'overlap' must be a boolean, got {v!r}")
    return conv


# --------------------------------------------------------------------------------------------------
# views the tables and figures share


def final_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of each task's last step: where the published tables report. The last step is the
    largest one any trial of that (dataset, task) reached, so a trial stopped early (ASHA, a failure)
    does not put an intermediate step into a final-step table."""
    if df.empty:
        return df
    last = df.groupby(["dataset", "task"])["step"].transform("max")
    return df[df["step"] == last]


def knob_columns(df: pd.DataFrame) -> list[str]:
    """Config knobs that may differ between grid points (``INERT`` ones left out)."""
    return [c for c in df.columns if is_knob(c) and c not in INERT]


def varying_knobs(df: pd.DataFrame) -> list[str]:
    """Knobs with more than one value in ``df``. A missing value (a row written by a wilss without that
    knob) is unknown, not another value."""
    return [c for c in knob_columns(df) if df[c].dropna().map(repr).nunique() > 1]


def class_columns(df: pd.DataFrame) -> list[str]:
    """``iou.<class>`` columns with at least one value, in the order the rows list them."""
    return [c for c in df.columns if c.startswith("iou.") and df[c].notna().any()]
