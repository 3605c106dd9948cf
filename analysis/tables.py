"""The tables: main comparison (WILSON/FMWISS Table 1 layout, and the DKD layout with hIoU), the
ablations with a paired comparison against the default, per-step results of multi-step tasks, and the
trials of a search. Every cell is mean ± std over seeds (percent) with the number of seeds beside it.

Each builder takes validated rows (``analysis.load``) and returns ``render.Table`` objects.
"""

from __future__ import annotations

import math

import pandas as pd

from analysis.detect import Block, at_defaults
from analysis.load import final_rows
from analysis.published import OURS, published_frame
from analysis.render import MISSING, Table, fmt, fmt_value
from analysis.schema import ABLATION_TITLES, CONVENTION_TEXT, CONVENTIONS, default_of
from analysis.stats import importances, paired_vs_default, seed_means

# Row order of the main tables: bounds first, then the baselines, then the methods of this repo.
METHOD_ORDER = ["joint", "finetune", "mib", "wilson", "dkd", "dkd-m", "fmwiss"]
OVERLAP_LABEL = {False: "disjoint", True: "overlap"}
REPEATS_TEXT = "Cells: mean ± std over seeds in % (std omitted for one seed); n = number of seeds; – = no run."


def percent(summary: pd.DataFrame) -> pd.DataFrame:
    """Metric means and stds of ``seed_means`` from fractions to percent."""
    out = summary.copy()
    for c in out.columns:
        if c.endswith((".mean", ".std")):
            out[c] = 100 * out[c]
    return out


def _order(methods) -> list[str]:
    return sorted(methods, key=lambda m: (METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER), m))


def _task_label(dataset: str, task: str, overlap: bool | None = None) -> str:
    return f"{dataset} {task}" + ("" if overlap is None else f" {OVERLAP_LABEL[bool(overlap)]}")


# --------------------------------------------------------------------------------------------------
# main comparison


def main_tables(df: pd.DataFrame, *, published: bool = True) -> list[Table]:
    """Methods × (disjoint, overlap) per (dataset, task), at the default setting of every varied knob;
    one table per convention; the published rows of the same dataset and task below ours."""
    tables = []
    for (dataset, task), rows in final_rows(df).groupby(["dataset", "task"], sort=True):
        rows, free = at_defaults(rows)
        for conv in ("wilson", "dkd"):
            tables.append(_comparison(rows, dataset, task, conv, published, free))
    return tables


def _comparison(rows: pd.DataFrame, dataset: str, task: str, conv: str, published: bool,
                free: list[str]) -> Table:
    cols = CONVENTIONS[conv]  # label -> metric
    s = percent(seed_means(rows, ["method", "overlap"], list(cols.values())))
    pub = published_frame(dataset, task) if published else published_frame("-", "-")
    pub = pub[pub["convention"].isin(["wilson", "recall"] if conv == "wilson" else ["dkd"])]
    overlaps = sorted(set(s["overlap"]) | set(pub["overlap"].dropna()))
    header, groups = ["method", "source"], []
    for ov in overlaps:
        groups.append((OVERLAP_LABEL[ov], len(header), len(cols) + 1))
        header += [*cols, "n"]
    body, data = [], []
    for m in _order(s["method"].unique()):
        cells = [m, "ours"]
        for ov in overlaps:
            r = s[(s["method"] == m) & (s["overlap"] == ov)]
            if r.empty:
                cells += [MISSING] * (len(cols) + 1)
                continue
            r = r.iloc[0]
            cells += [fmt(r[f"{c}.mean"], r[f"{c}.std"], r["n"]) for c in cols.values()] + [str(r["n"])]
            data.append({"dataset": dataset, "task": task, "overlap": ov, "method": m, "source": "ours",
                         "published": False, "n": r["n"],
                         **{f"{lab}{sfx}": r[f"{c}.{stat}"] for lab, c in cols.items()
                            for sfx, stat in (("", "mean"), ("_std", "std"))}})
        body.append(cells)
    rules = [len(body)] if len(pub) and body else []
    for (method, source), g in pub.groupby(["method", "source"], sort=False):
        star = "⋆" if (g["convention"] == "recall").any() else ""
        cells = [f"{method}{star}", f"{source} (published)" + (" UNSURE" if g["unsure"].any() else "")]
        for ov in overlaps:
            r = g[(g["overlap"] == ov) | g["overlap"].isna()]
            vals = r.iloc[0] if len(r) else None
            cells += [MISSING if vals is None or _none(vals[_pub_field(lab)]) else f"{vals[_pub_field(lab)]:.1f}"
                      for lab in cols] + [""]
            if vals is not None:
                data.append({"dataset": dataset, "task": task, "overlap": ov, "method": OURS.get(method, method),
                             "source": source, "published": True, "n": None,
                             **{lab: vals[_pub_field(lab)] for lab in cols}})
        body.append(cells)
    caption = (f"{_task_label(dataset, task)}, final step. {CONVENTION_TEXT[conv]} {REPEATS_TEXT} "
               f"Our rows use each method at the default setting of every knob varied in the results.")
    if free:
        caption += f" Varied without a run at the default, so mixed in the cells: {', '.join(free)}."
    if len(pub):
        caption += (" Published rows are copied from the source named (METHOD.md §6), not rerun; ⋆ = copied by "
                    "WILSON from RECALL, whose All is the weighted mean of old and new; UNSURE as flagged there.")
        if conv == "dkd":
            caption += " Published old/new of the DKD rows are derived from hIoU and all (METHOD.md §6.3)."
    name = f"main_{conv}_{dataset}_{task}"
    title = f"Main comparison, {_task_label(dataset, task)} ({'WILSON/FMWISS' if conv == 'wilson' else 'DKD'} layout)"
    return Table(name, title, caption, header, body, pd.DataFrame(data), groups=groups, rules=rules, n_labels=2)


def _pub_field(label: str) -> str:
    return {"hIoU": "hiou"}.get(label, label)


def _none(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


# --------------------------------------------------------------------------------------------------
# ablations


def ablation_table(block: Block, metric: str = "miou_all", *, seed: int = 0) -> Table:
    """One row per (task, setting): old / new / all / hIoU, n, and the paired difference of ``metric``
    against the default setting over seeds, with its 95% bootstrap interval."""
    fin, knobs = block.final, list(block.knobs)
    cols = {"old": "miou_old_nobg", "new": "miou_new", "all": "miou_all", "hIoU": "hiou"}
    by = ["dataset", "task", "overlap", "method", *knobs]
    s = percent(seed_means(fin, by, list(cols.values())))
    paired = paired_vs_default(fin, tuple(knobs), metric, seed=seed)
    default = tuple(default_of(k) for k in knobs)
    short = {k: k.split(".", 1)[1] for k in knobs}
    header = ["task", "method", *knobs, *cols, "n", f"Δ {_metric_name(metric)} vs default [95% CI]"]
    body, data = [], []
    s = s.sort_values(by, kind="stable")
    for _, r in s.iterrows():
        setting = tuple(r[k] for k in knobs)
        is_default = all(_eq(v, d) for v, d in zip(setting, default))
        p = paired
        for k in ["dataset", "task", "overlap", "method", *knobs] if not paired.empty else []:
            if k in p.columns:
                p = p[p[k].map(lambda v, w=r[k]: _eq(v, w))]
        delta = "default" if is_default else _fmt_delta(p.iloc[0]) if len(p) else MISSING
        body.append([_task_label(r["dataset"], r["task"], r["overlap"]), r["method"],
                     *(fmt_value(v) for v in setting),
                     *(fmt(r[f"{c}.mean"], r[f"{c}.std"], r["n"]) for c in cols.values()), str(r["n"]), delta])
        row = {k: r[k] for k in by} | {f"{lab}{sfx}": r[f"{c}.{st}"] for lab, c in cols.items()
                                          for sfx, st in (("", "mean"), ("_std", "std"))} | {"n": r["n"]}
        if len(p) and not is_default:
            q = p.iloc[0]
            row |= {"diff": 100 * q["diff"], "lo": 100 * q["lo"], "hi": 100 * q["hi"], "n_pairs": q["n"],
                    "noise": q["noise"]}
        data.append(row)
    title = f"Ablation: {ABLATION_TITLES.get(block.name, ', '.join(short.values()))}"
    caption = (f"Final step; sweep(s) {', '.join(block.sweeps)}. {CONVENTION_TEXT['wilson']} hIoU uses old with "
               f"background (DKD). {REPEATS_TEXT} Δ: mean difference to the default setting "
               f"({', '.join(f'{k}={fmt_value(d)}' for k, d in zip(knobs, default))}) over runs paired by seed, "
               f"with a 95% percentile bootstrap interval (10,000 resamples, seed {seed}); * = the interval "
               f"excludes 0, otherwise the difference is within seed noise; no interval with fewer than two "
               f"pairs.")
    return Table(f"ablation_{_slug(block.name)}", title, caption, header, body, pd.DataFrame(data), n_labels=2 + len(knobs))


def alpha_beta_grid(block: Block, metric: str = "miou_all") -> list[Table]:
    """α rows × β columns of ``metric`` (mean ± std over seeds, n), one table per task."""
    a, b = "fmwiss.alpha", "fmwiss.beta"
    s = percent(seed_means(block.final, ["dataset", "task", "overlap", "method", a, b], [metric]))
    out = []
    for (dataset, task, ov, method), g in s.groupby(["dataset", "task", "overlap", "method"], sort=True):
        betas, alphas = sorted(g[b].unique()), sorted(g[a].unique())
        body = []
        for al in alphas:
            cells = [fmt_value(al)]
            for be in betas:
                r = g[(g[a] == al) & (g[b] == be)]
                cells.append(MISSING if r.empty else
                             f"{fmt(r.iloc[0][f'{metric}.mean'], r.iloc[0][f'{metric}.std'], r.iloc[0]['n'])} "
                             f"(n={r.iloc[0]['n']})")
            body.append(cells)
        name = f"alpha_beta_grid_{dataset}_{task}_{OVERLAP_LABEL[bool(ov)]}" + ("" if method == "fmwiss" else f"_{method}")
        out.append(Table(name, f"α × β grid, {_task_label(dataset, task, ov)} ({method})",
                         f"Final-step {_metric_name(metric)} in %, rows α (hard/soft mix of the new-class targets), "
                         f"columns β (weight of the previous model in the old-class targets); "
                         f"{CONVENTION_TEXT['wilson'] if metric == 'miou_all' else ''} {REPEATS_TEXT}",
                         ["α \\ β", *(f"β={fmt_value(v)}" for v in betas)], body,
                         g.rename(columns={a: "alpha", b: "beta"}).reset_index(drop=True)))
    return out


# --------------------------------------------------------------------------------------------------
# per step, search


def per_step_tables(df: pd.DataFrame) -> list[Table]:
    """Multi-step tasks (three or more steps, e.g. 15-1, 10-1): every step of every method at the
    default setting, so forgetting is visible step by step."""
    rows, _ = at_defaults(df)
    cols = CONVENTIONS["dkd"]
    out = []
    for (dataset, task, ov), g in rows.groupby(["dataset", "task", "overlap"], sort=True):
        if g["step"].max() < 2:
            continue
        s = percent(seed_means(g, ["method", "step"], list(cols.values())))
        s = s.assign(_o=s["method"].map(_order(s["method"].unique()).index)).sort_values(["_o", "step"])
        body = [[r["method"], str(r["step"]), *(fmt(r[f"{c}.mean"], r[f"{c}.std"], r["n"]) for c in cols.values()),
                 str(r["n"])] for _, r in s.iterrows()]
        out.append(Table(f"per_step_{dataset}_{task}_{OVERLAP_LABEL[bool(ov)]}",
                         f"Per-step results, {_task_label(dataset, task, ov)}",
                         f"Every step's test set. {CONVENTION_TEXT['dkd']} At step t, new = classes of steps 1..t. "
                         f"{REPEATS_TEXT}", ["method", "step", *cols, "n"], body, s.drop(columns="_o"),
                         n_labels=2))
    return out


def search_tables(block: Block, metric: str = "miou_all", top: int = 10) -> list[Table]:
    """A search (Optuna) sweep: the best trials per task, and the knobs' importances."""
    fin, knobs = block.final, list(block.knobs)
    out = []
    for (dataset, task, ov), g in fin.groupby(["dataset", "task", "overlap"], sort=True):
        per_trial = g.groupby("trial_id", sort=False).agg({**{k: "first" for k in knobs}, metric: "mean"})
        best = per_trial.sort_values(metric, ascending=False).head(top)
        body = [[tid, *(fmt_value(r[k]) for k in knobs), fmt(100 * r[metric])] for tid, r in best.iterrows()]
        label = _task_label(dataset, task, ov)
        slug = f"{_slug(block.name)}_{dataset}_{task}_{OVERLAP_LABEL[bool(ov)]}"
        out.append(Table(f"{slug}_best", f"Search {block.sweeps[0]}: best trials, {label}",
                         f"Top {len(best)} of {len(per_trial)} trials by final-step {_metric_name(metric)} (%; one run "
                         f"each: repeat the best point with --repeats to get its spread).",
                         ["trial", *knobs, _metric_name(metric)], body, best.reset_index(), n_labels=1))
        imp = importances(per_trial.reset_index(), knobs, metric)
        if not imp.empty:
            out.append(Table(f"{slug}_importance", f"Search {block.sweeps[0]}: knob importance, {label}",
                             f"Share of the variance of {_metric_name(metric)} across {len(per_trial)} trials "
                             f"explained by each knob alone (eta², numeric knobs in quantile bins; a coarse "
                             f"first-order fANOVA), and normalised to sum 1. Few trials make it noisy.",
                             ["knob", "eta²", "importance"],
                             [[r["knob"], f"{r['eta2']:.2f}", f"{r['importance']:.2f}"] for _, r in imp.iterrows()],
                             imp))
    return out


def _fmt_delta(p) -> str:
    d, lo, hi = 100 * p["diff"], 100 * p["lo"], 100 * p["hi"]
    if math.isnan(lo):
        return f"{d:+.1f} (n={p['n']})"
    return f"{d:+.1f} [{lo:+.1f}, {hi:+.1f}]{'' if p['noise'] else '*'} (n={p['n']})"


def _eq(v, w) -> bool:
    if isinstance(v, float) or isinstance(w, float):
        try:
            return math.isclose(float(v), float(w))
        except (TypeError, ValueError):
            return False
    return v == w


def _metric_name(metric: str) -> str:
    return {"miou_all": "mIoU all", "miou_old": "mIoU old", "miou_new": "mIoU new", "hiou": "hIoU"}.get(metric, metric)


def _slug(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in s)

