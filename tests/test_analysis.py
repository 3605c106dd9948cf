"""analysis: reading and validating result rows, tables (values, shapes), figures, the report CLI.

Small Parquet datasets are built here in the layout the sweeps write
(``results/sweep=<s>/trial=<id>/<task>/step=<t>.parquet``), with known metrics, missing cells, one
repeat only and unknown extra columns.
"""

from __future__ import annotations

import subprocess
import sys
from itertools import product
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import ResultsError, read_results
from analysis.detect import blocks
from analysis.report import build_report, main
from analysis.schema import config_defaults
from analysis.stats import bootstrap_ci, importances, paired_vs_default
from analysis.tables import ablation_table, main_tables, per_step_tables

CLASSES = ["background", "circle", "square", "star"]


def row(sweep="s", trial="t0", method="fmwiss", dataset="synthetic", task="10-5", overlap=True, step=1, seed=0,
        all_=0.5, old=None, new=0.3, **knobs) -> dict:
    """One result row as wilss.results.make_row writes it (the columns analysis reads, plus extras)."""
    old = all_ if old is None else old
    r = {"schema_version": 1, "sweep": sweep, "trial_id": trial, "method": method, "dataset": dataset,
         "task": task, "overlap": overlap, "step": step, "seed": seed, "data.task": task, "data.overlap": overlap,
         "train.seed": seed, "pseudo.n_seeds": 9, "pseudo.fusion": "union", "fmwiss.lambda_dcl": 0.1,
         "fmwiss.alpha": 0.5, "fmwiss.beta": 0.9, "fmwiss.teacher": True, "fmwiss.dcl": True,
         "fmwiss.copy_paste": True, "train.lr_next": 0.0005,
         "miou_all": all_, "miou_old": old, "miou_new": new, "miou_old_nobg": old - 0.05, "miou_all_nobg": all_ - 0.05,
         "hiou": 2 * old * new / (old + new), "pseudo.miou_init": 0.4, "pseudo.miou_seeds": 0.3,
         "pseudo.miou_fused": 0.35 + 0.001 * knobs.get("pseudo.n_seeds", 9),
         "time.step_s": 1.0, "cache.step_hit": False, "git_sha": "abc", "some.future_column": "x"}
    r.update({f"iou.{c}": all_ for c in CLASSES})
    r.update(knobs)
    return r


def write(root: Path, rows: list[dict]) -> Path:
    for r in rows:
        path = root / f"sweep={r['sweep']}" / f"trial={r['trial_id']}" / r["task"] / f"step={r['step']}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame([r]).to_parquet(path, index=False)
    return root


def seeds_sweep(values=(1, 9), seeds=(0, 1, 2)) -> list[dict]:
    """ablate_seeds: final mIoU all = 0.4 + 0.01 * N + 0.01 * seed; step 0 shared."""
    rows = []
    for n, s in product(values, seeds):
        tid = f"n{n}s{s}"
        rows.append(row(sweep="ablate_seeds", trial=tid, step=0, seed=s, all_=0.7, new=0.0, **{"pseudo.n_seeds": n}))
        rows.append(row(sweep="ablate_seeds", trial=tid, step=1, seed=s, all_=0.4 + 0.01 * n + 0.01 * s,
                        **{"pseudo.n_seeds": n}))
    return rows


# --------------------------------------------------------------------------------------------------
# import rules, defaults


def test_importing_analysis_imports_neither_torch_nor_ray():
    code = ("import sys, analysis, analysis.report, analysis.figures, analysis.tables; "
            "analysis.schema.config_defaults(); "
            "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_defaults_are_the_papers_and_the_configs():
    from wilss.config import Config, flatten

    d = config_defaults()
    assert d == flatten(Config())
    assert (d["pseudo.n_seeds"], d["pseudo.fusion"], d["fmwiss.lambda_dcl"], d["fmwiss.alpha"], d["fmwiss.beta"]) == (
        9, "union", 0.1, 0.5, 0.9)
    assert d["fmwiss.teacher"] and d["fmwiss.dcl"] and d["fmwiss.copy_paste"]


# --------------------------------------------------------------------------------------------------
# reading and validation


def test_read_keeps_unknown_columns_and_sorts(tmp_path):
    df = read_results([str(write(tmp_path / "results", seeds_sweep()))])
    assert len(df) == 12 and df["some.future_column"].eq("x").all()
    assert df["step"].dtype == "int64" and df["overlap"].dtype == bool
    assert df["file"].str.endswith(".parquet").all()


def test_read_errors_name_the_file_column_and_fix(tmp_path):
    root = write(tmp_path / "results", seeds_sweep())
    with pytest.raises(ResultsError, match="no such file or folder"):
        read_results([str(tmp_path / "nope")])
    bad = row(sweep="x", all_=55.0)  # percent instead of a fraction
    write(tmp_path / "pct", [bad])
    with pytest.raises(ResultsError, match=r"step=1\.parquet: column 'miou_all' = 55\.0 .*fractions"):
        read_results([str(tmp_path / "pct")])
    r = row(sweep="y")
    del r["task"]
    pd.DataFrame([r]).to_parquet(tmp_path / "notask.parquet")
    with pytest.raises(ResultsError, match="notask.parquet: missing column.*task"):
        read_results([str(tmp_path / "notask.parquet")])
    dup = tmp_path / "copy"
    write(dup, seeds_sweep()[:1])
    with pytest.raises(ResultsError, match="in two files"):
        read_results([str(root), str(dup)])
    # the same folder given twice (and nested) is read once
    assert len(read_results([str(root), str(root / "sweep=ablate_seeds")])) == 12


# --------------------------------------------------------------------------------------------------
# statistics


def test_bootstrap_is_seeded_and_paired_difference_is_exact():
    x = np.array([0.1, 0.2, 0.15, 0.12])
    assert bootstrap_ci(x, seed=3) == bootstrap_ci(x, seed=3)
    lo, hi = bootstrap_ci(x)
    assert lo <= x.mean() <= hi
    assert np.isnan(bootstrap_ci([0.3])[0])
    df = read_results([str(write(Path(pytest.importorskip("tempfile").mkdtemp()) / "r", seeds_sweep()))])
    fin = df[df["step"] == 1]
    p = paired_vs_default(fin, ("pseudo.n_seeds",), "miou_all")
    assert len(p) == 1 and p.iloc[0]["pseudo.n_seeds"] == 1 and p.iloc[0]["n"] == 3
    # every pair differs by exactly 0.01 * (1 - 9): the interval collapses onto the difference
    assert p.iloc[0]["diff"] == pytest.approx(-0.08) and p.iloc[0]["lo"] == pytest.approx(-0.08)
    assert not p.iloc[0]["noise"]


def test_importances_find_the_knob_that_matters():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"a": rng.uniform(size=40), "b": rng.choice(["x", "y"], size=40)})
    df["m"] = df["a"] + 0.01 * rng.normal(size=40)
    imp = importances(df, ["a", "b"], "m")
    assert imp.iloc[0]["knob"] == "a" and imp["importance"].sum() == pytest.approx(1)


# --------------------------------------------------------------------------------------------------
# tables


def test_seed_ablation_table_values(tmp_path):
    df = read_results([str(write(tmp_path / "results", seeds_sweep()))])
    [b] = blocks(df)
    assert (b.name, b.knobs) == ("n_seeds", ("pseudo.n_seeds",))
    t = ablation_table(b)
    assert t.header[:3] == ["task", "method", "pseudo.n_seeds"] and len(t.rows) == 2
    n1, n9 = t.rows
    # N=1: all = 100 * (0.41 + 0.01 * seed) over seeds 0, 1, 2 -> 42.0 ± 1.0
    assert n1[2] == "1" and n1[t.header.index("all")] == "42.0 ± 1.0" and n1[t.header.index("n")] == "3"
    assert n1[-1].startswith("-8.0 [-8.0, -8.0]*")
    assert n9[t.header.index("all")] == "50.0 ± 1.0" and n9[-1] == "default"
    assert t.data.loc[0, "diff"] == pytest.approx(-8.0) and t.data.loc[0, "n_pairs"] == 3


def test_main_table_missing_cells_and_one_repeat(tmp_path):
    rows = [row(sweep="cmp", trial="a", method="fmwiss", overlap=True, all_=0.6),
            row(sweep="cmp", trial="b", method="finetune", overlap=True, all_=0.2),
            row(sweep="cmp", trial="c", method="finetune", overlap=False, all_=0.1)]
    df = read_results([str(write(tmp_path / "r", rows))])
    wil = next(t for t in main_tables(df) if t.name == "main_wilson_synthetic_10-5")
    assert wil.header == ["method", "source", "old", "new", "all", "n", "old", "new", "all", "n"]
    assert [g[0] for g in wil.groups] == ["disjoint", "overlap"]
    fin, fm = wil.rows  # finetune before fmwiss (bounds and baselines first)
    assert fin[:2] == ["finetune", "ours"] and fin[4] == "10.0" and fin[8] == "20.0"  # one seed: no ±
    assert fm[2:6] == ["–"] * 4 and fm[8] == "60.0" and fm[9] == "1"  # no disjoint run: missing cells
    assert "background" in wil.caption and "including background" in wil.caption


def test_per_step_table_for_multi_step_tasks(tmp_path):
    rows = [row(sweep="cmp", trial=f"{m}{s}", method=m, task="10-1", step=t, seed=s, all_=0.8 - 0.05 * t)
            for m in ("dkd", "mib") for s in (0, 1) for t in range(4)]
    rows += [row(sweep="cmp", trial="x", method="dkd", task="10-5", step=t) for t in (0, 1)]
    df = read_results([str(write(tmp_path / "r", rows))])
    [t] = per_step_tables(df)  # 10-5 has two steps only: no per-step table
    assert t.name == "per_step_synthetic_10-1_overlap" and len(t.rows) == 8
    assert t.rows[0][:2] == ["mib", "0"] and t.rows[3][t.header.index("all")] == "65.0 ± 0.0"


# --------------------------------------------------------------------------------------------------
# report: figures, published rows, CLI


def _mixed_voc() -> list[dict]:
    """compare_methods on VOC: three methods x 15-5 (disjoint, overlap) and 15-1, two seeds; DKD misses
    disjoint 15-5 (a missing cell)."""
    rows = []
    for m, s, (task, steps), ov in product(("fmwiss", "wilson", "dkd"), (0, 1), (("15-5", 2), ("15-1", 6)),
                                          (False, True)):
        if (m == "dkd" and task == "15-5" and not ov) or (task == "15-1" and not ov):
            continue
        tid = f"{m}-{task}-{ov:d}-{s}"
        for t in range(steps):
            rows.append(row(sweep="compare_methods-voc", trial=tid, method=m, dataset="voc", task=task, overlap=ov,
                            step=t, seed=s, all_=0.75 - 0.03 * t - 0.01 * s, new=0.0 if t == 0 else 0.4))
    return rows


def test_report_over_methods_and_tasks_shows_published_rows(tmp_path):
    rows = _mixed_voc() + seeds_sweep(values=(1, 5, 9))
    rows += [row(sweep="ablate_fusion", trial=f"{f}{s}", seed=s, all_=0.5 - 0.1 * (f != "union"),
                 **{"pseudo.fusion": f}) for f in ("union", "none", "intersection") for s in (0, 1)]
    rows += [row(sweep="ablate_lambda", trial=f"l{v}", all_=0.5 + v / 10, **{"fmwiss.lambda_dcl": v})
             for v in (0.0, 0.01, 0.1, 1.0)]
    rows += [row(sweep="ablate_alpha_beta", trial=f"a{a}b{b}", all_=0.4 + a / 10 + b / 10,
                 **{"fmwiss.alpha": a, "fmwiss.beta": b}) for a in (0.25, 0.5) for b in (0.7, 0.9)]
    rows += [row(sweep="ablate_components", trial=f"c{t:d}{d:d}", all_=0.4 + 0.1 * t + 0.05 * d,
                 **{"fmwiss.teacher": t, "fmwiss.dcl": d}) for t in (True, False) for d in (True, False)]
    rng = np.random.default_rng(1)
    rows += [row(sweep="sweep", trial=f"o{i}", all_=float(rng.uniform(0.3, 0.6)), task="5-5",
                 **{"fmwiss.alpha": float(rng.uniform()), "fmwiss.beta": float(rng.uniform(0.5, 1)),
                    "pseudo.fusion": str(rng.choice(["union", "none"]))}) for i in range(8)]
    root = write(tmp_path / "results", rows)
    out = tmp_path / "report"
    assert main([str(root), "--out", str(out)]) == 0

    tables = {p.stem for p in (out / "tables").glob("*.md")}
    assert {"main_wilson_voc_15-5", "main_dkd_voc_15-5", "main_dkd_voc_15-1", "per_step_voc_15-1_overlap",
            "ablation_n_seeds", "ablation_fusion", "ablation_lambda", "ablation_alpha_beta",
            "ablation_components", "alpha_beta_grid_synthetic_10-5_overlap"} <= tables
    assert any(t.startswith("search_sweep_synthetic_5-5") and t.endswith("_importance") for t in tables)
    for ext in ("md", "tex", "csv"):
        assert (out / "tables" / f"main_wilson_voc_15-5.{ext}").stat().st_size > 0

    main_md = (out / "tables" / "main_wilson_voc_15-5.md").read_text()
    lines = main_md.splitlines()
    ours = next(ln for ln in lines if ln.startswith("| wilson | ours"))
    pub = next(ln for ln in lines if ln.startswith("| WILSON | WILSON (CVPR'22) Tab. 1 (published)"))
    assert "73.6" in pub and "67.2" in pub  # disjoint old, overlap all (METHOD.md §6.1)
    assert "71.5 ± 0.7" in ours  # all at step 1: 100 * (0.72, 0.71) over two seeds
    assert "| dkd | ours | – | – | – | – |" in main_md  # no disjoint DKD run
    assert "70.7" in next(ln for ln in lines if ln.startswith("| FMWISS |"))
    assert "\\toprule" in (out / "tables" / "main_wilson_voc_15-5.tex").read_text()
    csv = pd.read_csv(out / "tables" / "main_wilson_voc_15-5.csv")
    assert csv["published"].any() and (~csv["published"]).any()
    dkd15_1 = (out / "tables" / "main_dkd_voc_15-1.md").read_text()
    assert "DKD-M" in dkd15_1 and "72.5" in dkd15_1  # DKD-M 15-1 mIoU all (METHOD.md §6.3)

    figs = {p.stem for p in (out / "figures").glob("*.png")}
    assert {"miou_vs_n_seeds", "lambda_sensitivity", "fusion_bars", "alpha_beta_heatmap", "components_bars",
            "pseudo_quality_vs_n_seeds", "per_class_iou_voc_15-5_overlap", "miou_per_step_voc_15-1_overlap"} <= figs
    assert any(f.endswith("_importance") for f in figs) and any(f.endswith("_parallel") for f in figs)
    for f in (out / "figures").iterdir():
        assert f.stat().st_size > 1000, f

    md = (out / "report.md").read_text()
    assert "## Main comparison" in md and "(published)" in md and "figures/miou_vs_n_seeds.png" in md
    assert "## Ablation: pseudo.n_seeds" in md and "## Search:" in md


def test_report_api_headline_and_bad_input(tmp_path, capsys):
    df = read_results([str(write(tmp_path / "r", seeds_sweep()))])
    rep = build_report(df, tmp_path / "out")
    assert rep.headline.name == "ablation_n_seeds" and rep.markdown.exists()
    assert main([str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
