"""Statistics over result rows: means over repeats (seeds), paired bootstrap differences against the
default setting, and knob importances for searches.

Repeats are seeds: rows of the same setting and seed (e.g. the same default point run by two ablation
sweeps) are averaged first, so a repeated run never counts as an extra repeat.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.load import varying_knobs
from analysis.schema import default_of

BOOT_SEED = 0  # the bootstrap's RNG seed: the same rows always give the same interval
BOOT_SAMPLES = 10000


def seed_means(df: pd.DataFrame, by: list[str], metrics: list[str]) -> pd.DataFrame:
    """``by`` + ``<metric>.mean``, ``<metric>.std`` (over seeds, ddof=1; NaN for one seed) + ``n`` (seeds).

    Shapes: ``df`` has one row per (trial, step); the result one row per distinct ``by``.
    """
    if df.empty:
        return pd.DataFrame(columns=[*by, *(f"{m}.{s}" for m in metrics for s in ("mean", "std")), "n"])
    per_seed = df.groupby([*by, "seed"], dropna=False, sort=False)[metrics].mean().reset_index()
    grouped = per_seed.groupby(by, dropna=False, sort=False)
    out = grouped[metrics].agg(["mean", "std"])
    out.columns = [f"{m}.{s}" for m, s in out.columns]
    out["n"] = grouped.size()
    return out.reset_index()


def bootstrap_ci(x, *, level: float = 0.95, n_boot: int = BOOT_SAMPLES, seed: int = BOOT_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``x`` (1-D). NaN, NaN for fewer than two values."""
    x = np.asarray(x, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)  # (n_boot,)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def paired_vs_default(df: pd.DataFrame, knobs: tuple[str, ...], metric: str, *, default: tuple | None = None,
                      seed: int = BOOT_SEED, n_boot: int = BOOT_SAMPLES) -> pd.DataFrame:
    """Each setting of ``knobs`` against the default setting, paired over seeds.

    ``df``: final-step rows of one ablation. A pair is two runs that differ only in ``knobs``: same
    dataset, task, overlap, method, seed and values of every other varying knob. Returns one row per
    (dataset, task, overlap, setting) with ``n`` pairs, ``diff`` = mean(setting - default) and its 95%
    bootstrap interval ``lo``..``hi``; ``noise`` is True when the interval holds 0 (or n < 2).
    An empty frame when the default setting was not run.
    """
    default = default if default is not None else tuple(default_of(k) for k in knobs)
    others = [k for k in varying_knobs(df) if k not in knobs]
    key = ["dataset", "task", "overlap", "method", "seed", *others]
    cells = df.groupby([*key, *knobs], dropna=False)[metric].mean().reset_index()
    is_default = np.logical_and.reduce([same_value(cells[k], v) for k, v in zip(knobs, default)])
    base = cells[is_default].drop(columns=list(knobs)).rename(columns={metric: "base"})
    rows = []
    if base.empty:
        return pd.DataFrame(columns=["dataset", "task", "overlap", *knobs, "n", "diff", "lo", "hi", "noise"])
    pairs = cells[~is_default].merge(base, on=key, how="inner")
    pairs["d"] = pairs[metric] - pairs["base"]
    for (dataset, task, overlap, *setting), g in pairs.groupby(["dataset", "task", "overlap", *knobs], sort=True):
        d = g["d"].dropna().to_numpy()
        lo, hi = bootstrap_ci(d, seed=seed, n_boot=n_boot)
        rows.append({"dataset": dataset, "task": task, "overlap": overlap, **dict(zip(knobs, setting)),
                     "n": len(d), "diff": float(d.mean()) if len(d) else float("nan"), "lo": lo, "hi": hi,
                     "noise": bool(len(d) < 2 or lo <= 0 <= hi)})
    return pd.DataFrame(rows)


def same_value(values: pd.Series, v) -> np.ndarray:
    """Which of ``values`` equal ``v`` (floats: up to rounding, so 0.1 read back from Parquet matches)."""
    if isinstance(v, float):
        return np.isclose(pd.to_numeric(values, errors="coerce").to_numpy(dtype=float), v)
    return (values == v).to_numpy(dtype=bool)


def importances(df: pd.DataFrame, knobs: list[str], metric: str, *, max_bins: int = 4) -> pd.DataFrame:
    """How much of the metric's variance across trials each knob explains on its own (first-order, a
    coarse fANOVA main effect): eta² = between-bin variance / total variance, where a categorical knob's
    bins are its values and a numeric knob's are up to ``max_bins`` quantile bins. ``importance`` is eta²
    normalised to sum 1 (as optuna's importances are). Columns: knob, eta2, importance; sorted.

    ``df``: one row per trial (final step). Needs at least three trials with a value.
    """
    d = df.dropna(subset=[metric])
    y = d[metric].to_numpy(dtype=float)
    total = float(((y - y.mean()) ** 2).sum()) if len(y) else 0.0
    if len(y) < 3 or total == 0.0:
        return pd.DataFrame(columns=["knob", "eta2", "importance"])
    rows = []
    for k in knobs:
        x = d[k]
        numeric = pd.api.types.is_numeric_dtype(x) and not pd.api.types.is_bool_dtype(x)
        if numeric and x.nunique() > max_bins:
            bins = pd.qcut(x.rank(method="first"), q=min(max_bins, len(x) // 2), labels=False)
        else:
            bins = x.astype(str)
        means = pd.Series(y, index=d.index).groupby(bins.to_numpy()).agg(["mean", "size"])
        rows.append({"knob": k, "eta2": float((means["size"] * (means["mean"] - y.mean()) ** 2).sum() / total)})
    out = pd.DataFrame(rows)
    s = out["eta2"].sum()
    out["importance"] = out["eta2"] / s if s > 0 else 0.0
    return out.sort_values("importance", ascending=False).reset_index(drop=True)
