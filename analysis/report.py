"""Every table and figure the results support, and one ``report.md`` that shows them.

    python -m analysis.report runs/sweeps/results --out runs/report
    python -m analysis.report runs/sweeps/results/sweep=ablate_seeds s3://bucket/wilss/results --out rep

Writes ``<out>/tables/*.{md,tex,csv}``, ``<out>/figures/*.{png,pdf}`` and ``<out>/report.md``. What is
written depends on the rows (``analysis.detect``): the main comparison for every (dataset, task), the
per-step table and forgetting curves for tasks with several steps, per-class IoU, an ablation table and
figure for each sweep that varies knobs, importances and parallel coordinates for a search.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis import figures, tables
from analysis.detect import Block, blocks
from analysis.load import ResultsError, final_rows, read_results
from analysis.render import Table, to_markdown

FIGURE_NAMES = {"n_seeds": "miou_vs_n_seeds", "lambda": "lambda_sensitivity", "fusion": "fusion_bars",
                "components": "components_bars"}


@dataclass
class Report:
    out: Path
    markdown: Path | None = None
    tables: list[Table] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    headline: Table | None = None  # the table an experiment script prints: its ablation, else the main one


def build_report(df: pd.DataFrame, out: str | Path, *, metric: str = "miou_all", published: bool = True,
                 seed: int = 0, sources: list[str] | None = None) -> Report:
    out = Path(out)
    tdir, fdir = out / "tables", out / "figures"
    figures.style()
    rep = Report(out)
    sections: list[tuple[str, list[Table], list[Path], str]] = []  # (heading, tables, figures, text)

    main = tables.main_tables(df, published=published)
    sections.append(("Main comparison", main, figures.per_class_heatmaps(df, fdir),
                     "Final step, each method at the default setting of every knob the results vary."))
    steps = tables.per_step_tables(df)
    sections.append(("Per step (forgetting)", steps, figures.forgetting_curves(df, fdir), ""))
    ablations = []
    for b in blocks(df):
        tabs, figs = _block_outputs(b, fdir, metric, seed)
        kind = "Search" if b.kind == "search" else "Ablation"
        sections.append((f"{kind}: {', '.join(b.knobs)}", tabs, figs, f"Sweep(s): {', '.join(b.sweeps)}."))
        ablations += tabs
    rep.headline = (ablations or main or [None])[0]

    for _, tabs, figs, _ in sections:
        for t in tabs:
            t.write(tdir)
        rep.tables += tabs
        rep.figures += figs
    rep.markdown = out / "report.md"
    rep.markdown.write_text(_markdown(df, sections, sources or [], published))
    return rep


def _block_outputs(b: Block, fdir: Path, metric: str, seed: int) -> tuple[list[Table], list[Path]]:
    if b.kind == "search":
        return tables.search_tables(b, metric), figures.search_figures(b, fdir, metric)
    tabs = [tables.ablation_table(b, metric, seed=seed)]
    if b.name == "alpha_beta":
        tabs += tables.alpha_beta_grid(b, metric)
        figs = figures.alpha_beta_heatmap(b, fdir, metric)
    else:
        figs = figures.knob_figure(b, fdir, FIGURE_NAMES.get(b.name, f"ablation_{tabs[0].name.removeprefix('ablation_')}"))
    if b.name == "n_seeds":
        figs += figures.pseudo_quality(b, fdir)
    return tabs, figs


def _markdown(df: pd.DataFrame, sections, sources: list[str], published: bool) -> str:
    fin = final_rows(df)
    sweeps = ", ".join(s or "(single runs)" for s in sorted(set(df["sweep"])))
    lines = ["# wilss results report", "",
             (f"Sources: {', '.join(f'`{s}`' for s in sources) or '(in memory)'}. {len(df)} rows; sweeps: "
              f"{sweeps}; methods: {', '.join(sorted(set(df['method'])))}; tasks: "
              f"{', '.join(sorted(set(df['dataset'] + ' ' + df['task'])))}; seeds: "
              f"{', '.join(map(str, sorted(set(df['seed']))))}."), ""]
    unfinished = sorted(set(df["sweep"] + "/" + df["trial_id"] + "/" + df["task"]) -
                        set(fin["sweep"] + "/" + fin["trial_id"] + "/" + fin["task"]))
    if unfinished:
        lines += [(f"**Note:** {len(unfinished)} run(s) did not reach their task's last step and are left out "
                   f"of the final-step tables: {', '.join(unfinished[:8])}{' ...' if len(unfinished) > 8 else ''}."),
                  ""]
    if published:
        lines += [("Published reference rows (METHOD.md §6) appear under our rows where the dataset and task "
                   "match; FMWISS's ablation tables were not recovered (§6.2), so the ablations have none."), ""]
    for heading, tabs, figs, text in sections:
        if not tabs and not figs:
            continue
        lines += [f"## {heading}", ""] + ([text, ""] if text else [])
        for t in tabs:
            lines += [f"**{t.title}.** {t.caption}", "", to_markdown(t), "",
                      f"[LaTeX](tables/{t.name}.tex) · [CSV](tables/{t.name}.csv)", ""]
        for f in figs:
            lines += [f"![{f.stem}](figures/{f.name}) ([PDF](figures/{f.stem}.pdf))", ""]
    return "\n".join(lines)


def report(sources: list[str], out: str | Path, **kwargs) -> Report:
    """Read ``sources`` (paths or URIs) and write the report into ``out``."""
    return build_report(read_results(sources), out, sources=[str(s) for s in sources], **kwargs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", metavar="RESULTS",
                   help="result folders, sweep folders, Parquet files or pyarrow URIs (s3://bucket/wilss/results)")
    p.add_argument("--out", required=True, help="output folder (tables/, figures/, report.md)")
    p.add_argument("--metric", default="miou_all", help="metric of the paired comparisons and searches "
                                                        "(default miou_all)")
    p.add_argument("--no-published", action="store_true", help="leave out the published reference rows")
    p.add_argument("--seed", type=int, default=0, help="bootstrap RNG seed (default 0)")
    args = p.parse_args(argv)
    try:
        rep = report(args.results, args.out, metric=args.metric, published=not args.no_published, seed=args.seed)
    except ResultsError as e:
        print(f"analysis.report: error: {e}", file=sys.stderr)
        return 2
    print(f"{len(rep.tables)} table(s) in {rep.out / 'tables'}, {len(rep.figures)} figure(s) in "
          f"{rep.out / 'figures'}\nreport: {rep.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
