"""The figures, PNG and PDF, in one style (``style``): knob sweeps with error bars (mIoU vs N, λ
sensitivity, fusion and component bars), the α × β heat map, per-class IoU across methods, mIoU per step
(forgetting curves), pseudo-label quality vs N, and a search's importances and parallel coordinates.

Every function takes validated rows and a folder and returns the PNG paths it wrote ([] when the rows
hold nothing to draw). Error bars are the std over seeds; a point with one seed has none.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display; set before pyplot is imported

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.detect import Block, at_defaults
from analysis.load import class_columns, final_rows
from analysis.render import fmt_value
from analysis.schema import METRIC_LABELS, PSEUDO_METRICS, default_of
from analysis.stats import importances, seed_means
from analysis.tables import OVERLAP_LABEL, _order, percent

LINES = {"miou_all": ("all", "C0", "-"), "miou_old_nobg": ("old", "C1", "--"), "miou_new": ("new", "C2", ":")}


def style() -> None:
    """The one style of every figure: small serif-free fonts, light grid, no top/right spines."""
    plt.rcParams.update({
        "figure.dpi": 110, "savefig.dpi": 200, "savefig.bbox": "tight", "font.size": 9, "axes.titlesize": 9,
        "axes.labelsize": 9, "legend.fontsize": 8, "axes.grid": True, "grid.alpha": 0.3,
        "axes.spines.top": False, "axes.spines.right": False, "lines.linewidth": 1.5, "lines.markersize": 4,
        "errorbar.capsize": 2, "pdf.fonttype": 42,
    })


def save(fig, folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    png = folder / f"{name}.png"
    fig.savefig(png)
    fig.savefig(folder / f"{name}.pdf")
    plt.close(fig)
    return png


def _panels(n: int, width: float = 3.2, height: float = 2.6):
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def _groups(df: pd.DataFrame):
    """(title, rows) per (dataset, task, overlap, method)."""
    for (dataset, task, ov, method), g in df.groupby(["dataset", "task", "overlap", "method"], sort=True):
        yield f"{dataset} {task} {OVERLAP_LABEL[bool(ov)]} ({method})", g


# --------------------------------------------------------------------------------------------------
# knob sweeps


def knob_figure(block: Block, folder: Path, name: str) -> list[Path]:
    """One knob: a line with error bars per metric for a numeric knob, grouped bars otherwise; several
    knobs (components): bars over the settings."""
    fin = block.final
    knobs = list(block.knobs)
    groups = list(_groups(fin))
    fig, axes = _panels(len(groups), width=3.6 if len(knobs) > 1 else 3.2)
    for ax, (title, g) in zip(axes, groups):
        s = percent(seed_means(g, knobs, list(LINES))).sort_values(knobs)
        numeric = len(knobs) == 1 and pd.api.types.is_numeric_dtype(s[knobs[0]]) \
            and not pd.api.types.is_bool_dtype(s[knobs[0]])
        if numeric:
            x = s[knobs[0]].to_numpy(dtype=float)
            for m, (label, color, ls) in LINES.items():
                ax.errorbar(x, s[f"{m}.mean"], yerr=s[f"{m}.std"].fillna(0), color=color, ls=ls, marker="o",
                            label=label)
            d = default_of(knobs[0])
            if d is not None:
                ax.axvline(float(d), color="0.6", lw=0.8, ls="-.", label="default")
            if (x == 0).any() and x.max() / max(x[x > 0].min(initial=1), 1e-12) > 20:
                ax.set_xscale("symlog", linthresh=float(x[x > 0].min(initial=1)))
            elif x.min() > 0 and x.max() / x.min() > 20:
                ax.set_xscale("log")
            ax.set_xlabel(knobs[0])
        else:
            labels = [" ".join(fmt_value(v) if len(knobs) == 1 else f"{k.split('.')[-1]}{fmt_value(v)}"
                               for k, v in zip(knobs, r)) for r in s[knobs].itertuples(index=False)]
            pos = np.arange(len(s))
            w = 0.8 / len(LINES)
            for i, (m, (label, color, _)) in enumerate(LINES.items()):
                ax.bar(pos + (i - 1) * w, s[f"{m}.mean"], w, yerr=s[f"{m}.std"].fillna(0), color=color,
                       label=label)
            ax.set_xticks(pos, labels, rotation=30 if len(knobs) > 1 else 0, ha="right" if len(knobs) > 1 else "center")
            ax.set_xlabel(", ".join(knobs))
        ax.set_title(title)
        ax.set_ylabel("mIoU (%)")
    axes[0].legend()
    return [save(fig, folder, name)]


def alpha_beta_heatmap(block: Block, folder: Path, metric: str = "miou_all") -> list[Path]:
    a, b = "fmwiss.alpha", "fmwiss.beta"
    groups = list(_groups(block.final))
    fig, axes = _panels(len(groups), width=3.4, height=2.9)
    for ax, (title, g) in zip(axes, groups):
        s = percent(seed_means(g, [a, b], [metric]))
        grid = s.pivot(index=a, columns=b, values=f"{metric}.mean").sort_index().sort_index(axis=1)
        im = ax.imshow(grid.to_numpy(), cmap="viridis", origin="lower", aspect="auto")
        for (i, j), v in np.ndenumerate(grid.to_numpy()):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", color="w", fontsize=8)
        ax.set_xticks(range(grid.shape[1]), [fmt_value(v) for v in grid.columns])
        ax.set_yticks(range(grid.shape[0]), [fmt_value(v) for v in grid.index])
        ax.set_xlabel("β (fmwiss.beta)")
        ax.set_ylabel("α (fmwiss.alpha)")
        ax.set_title(title)
        ax.grid(False)
        fig.colorbar(im, ax=ax, label=f"{METRIC_LABELS.get(metric, metric)} mIoU (%)")
    return [save(fig, folder, "alpha_beta_heatmap")]


PSEUDO_COLOURS = {"pseudo.miou_init": "C3", "pseudo.miou_seeds": "C4", "pseudo.miou_fused": "C0",
                  "pseudo.miou_ones": "0.4", "pseudo.miou_random": "0.7"}


def pseudo_quality(block: Block, folder: Path) -> list[Path]:
    """Pseudo-label mIoU against ground truth (steps >= 1, averaged over a trial's steps) vs N."""
    k = "pseudo.n_seeds"
    rows = block.rows[block.rows["step"] >= 1]
    cols = [c for c in PSEUDO_METRICS if c in rows.columns and rows[c].notna().any()]
    if rows.empty or not cols:
        return []
    per_trial = rows.groupby(["sweep", "trial_id", "dataset", "task", "overlap", "method", "seed", k],
                             as_index=False)[cols].mean()
    groups = list(_groups(per_trial))
    fig, axes = _panels(len(groups))
    for ax, (title, g) in zip(axes, groups):
        s = percent(seed_means(g, [k], cols)).sort_values(k)
        for c in cols:
            baseline = c in ("pseudo.miou_ones", "pseudo.miou_random")  # image labels only: dashed
            ax.errorbar(s[k], s[f"{c}.mean"], yerr=s[f"{c}.std"].fillna(0), marker="" if baseline else "o",
                        linestyle="--" if baseline else "-", color=PSEUDO_COLOURS[c], label=METRIC_LABELS[c])
        ax.set_xlabel("N (pseudo.n_seeds)")
        ax.set_ylabel("pseudo-label mIoU (%)")
        ax.set_title(title)
    axes[0].legend()
    return [save(fig, folder, "pseudo_quality_vs_n_seeds")]


# --------------------------------------------------------------------------------------------------
# methods


def per_class_heatmaps(df: pd.DataFrame, folder: Path) -> list[Path]:
    """Final-step IoU per class (columns) and method (rows), at the default setting; one per task."""
    fin, _ = at_defaults(final_rows(df))
    out = []
    for (dataset, task, ov), g in fin.groupby(["dataset", "task", "overlap"], sort=True):
        classes = class_columns(g)
        if not classes:
            continue
        s = percent(seed_means(g, ["method"], classes)).set_index("method")
        s = s.loc[_order(s.index)]
        grid = s[[f"{c}.mean" for c in classes]].to_numpy(dtype=float)
        fig, ax = plt.subplots(figsize=(max(4.0, 0.32 * len(classes) + 1.5), 0.4 * len(s) + 1.4))
        im = ax.imshow(grid, cmap="magma", vmin=0, vmax=100, aspect="auto")
        ax.set_xticks(range(len(classes)), [c.removeprefix("iou.") for c in classes], rotation=60, ha="right")
        ax.set_yticks(range(len(s)), s.index)
        ax.grid(False)
        ax.set_title(f"{dataset} {task} {OVERLAP_LABEL[bool(ov)]}: IoU per class, final step")
        fig.colorbar(im, ax=ax, label="IoU (%)")
        out.append(save(fig, folder, f"per_class_iou_{dataset}_{task}_{OVERLAP_LABEL[bool(ov)]}"))
    return out


def forgetting_curves(df: pd.DataFrame, folder: Path) -> list[Path]:
    """mIoU of old classes (with background) and of all classes after each step, per method."""
    rows, _ = at_defaults(df)
    out = []
    for (dataset, task, ov), g in rows.groupby(["dataset", "task", "overlap"], sort=True):
        if g["step"].nunique() < 2:
            continue
        s = percent(seed_means(g, ["method", "step"], ["miou_old", "miou_all"]))
        fig, axes = _panels(2)
        for ax, m, label in zip(axes, ("miou_old", "miou_all"), ("old classes (with bg)", "all seen classes")):
            for i, method in enumerate(_order(s["method"].unique())):
                r = s[s["method"] == method].sort_values("step")
                ax.errorbar(r["step"], r[f"{m}.mean"], yerr=r[f"{m}.std"].fillna(0), marker="o", color=f"C{i}",
                            label=method)
            ax.set_xlabel("step")
            ax.set_ylabel("mIoU (%)")
            ax.set_title(f"{dataset} {task} {OVERLAP_LABEL[bool(ov)]}: {label}")
            ax.set_xticks(sorted(s["step"].unique()))
        axes[0].legend()
        out.append(save(fig, folder, f"miou_per_step_{dataset}_{task}_{OVERLAP_LABEL[bool(ov)]}"))
    return out


# --------------------------------------------------------------------------------------------------
# search


def search_figures(block: Block, folder: Path, metric: str = "miou_all") -> list[Path]:
    """Per task: knob importances (bars) and parallel coordinates (one line per trial, coloured by the
    metric; categorical knobs at evenly spaced positions, numeric ones min-max scaled)."""
    out, knobs = [], list(block.knobs)
    for (dataset, task, ov), g in block.final.groupby(["dataset", "task", "overlap"], sort=True):
        per_trial = g.groupby("trial_id").agg({**{k: "first" for k in knobs}, metric: "mean"}).dropna(subset=[metric])
        if len(per_trial) < 2:
            continue
        slug = f"{block.name}_{dataset}_{task}_{OVERLAP_LABEL[bool(ov)]}"
        imp = importances(per_trial.reset_index(), knobs, metric)
        if not imp.empty:
            fig, ax = plt.subplots(figsize=(4.2, 0.35 * len(imp) + 1.0))
            ax.barh(imp["knob"][::-1], imp["importance"][::-1], color="C0")
            ax.set_xlabel("importance (share of explained variance)")
            ax.set_title(f"{dataset} {task}: knob importance ({len(per_trial)} trials)")
            out.append(save(fig, folder, f"{slug}_importance"))
        axes_vals, ticks = [], []
        for k in knobs:
            v = per_trial[k]
            if pd.api.types.is_numeric_dtype(v) and not pd.api.types.is_bool_dtype(v):
                x = v.to_numpy(dtype=float)
                lo, hi = np.nanmin(x), np.nanmax(x)
                axes_vals.append((x - lo) / (hi - lo) if hi > lo else np.full_like(x, 0.5))
                ticks.append([(0.0, f"{lo:.3g}"), (1.0, f"{hi:.3g}")])
            else:
                cats = sorted(v.astype(str).unique())
                pos = {c: i / max(len(cats) - 1, 1) for i, c in enumerate(cats)}
                axes_vals.append(v.astype(str).map(pos).to_numpy(dtype=float))
                ticks.append([(p, c) for c, p in pos.items()])
        y = 100 * per_trial[metric].to_numpy(dtype=float)
        axes_vals.append((y - y.min()) / (y.max() - y.min()) if y.max() > y.min() else np.full_like(y, 0.5))
        ticks.append([(0.0, f"{y.min():.1f}"), (1.0, f"{y.max():.1f}")])
        fig, ax = plt.subplots(figsize=(1.5 * len(axes_vals) + 1, 3.2))
        cmap = plt.get_cmap("viridis")
        norm = plt.Normalize(y.min(), y.max() if y.max() > y.min() else y.min() + 1)
        data = np.stack(axes_vals, axis=1)  # (trials, knobs + 1)
        for i in np.argsort(y):
            ax.plot(range(data.shape[1]), data[i], color=cmap(norm(y[i])), alpha=0.8)
        for j, tk in enumerate(ticks):
            ax.axvline(j, color="0.3", lw=0.8)
            for p, label in tk:
                ax.text(j + 0.03, p, label, fontsize=7, va="center")
        ax.set_xticks(range(data.shape[1]), [*knobs, f"{METRIC_LABELS.get(metric, metric)} (%)"], rotation=20)
        ax.set_yticks([])
        ax.grid(False)
        ax.set_title(f"{dataset} {task}: {len(per_trial)} trials")
        fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="mIoU (%)")
        out.append(save(fig, folder, f"{slug}_parallel"))
    return out
