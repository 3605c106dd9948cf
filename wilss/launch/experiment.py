"""The shared command line of the ``experiments/`` scripts: flags, config, sweep, summary table.

Each script declares an ``Experiment`` (its grid or search space and its defaults) and calls
``main(EXPERIMENT)``. Flags common to all (``--help`` lists them): ``--smoke-test``, ``--resume``,
``--tasks``, ``--repeats``, ``--data-root``, ``--storage``, ``--workers``, ``--gpus-per-trial``,
``--preset``, ``--set``, ``--name``, ``--concurrency``. A Ray cluster is attached through
``RAY_ADDRESS`` (``ray job submit`` sets it); without it a local Ray is started.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field

from wilss.config import override, parse_assignments
from wilss.errors import WilssError
from wilss.launch.storage import Storage, default_artifacts
from wilss.launch.sweep import Search, SweepResult, run_sweep
from wilss.launch.trial import SweepSpec
from wilss.presets import preset

# --smoke-test: the whole pipeline in a minute or two (tiny synthetic data, one epoch per step).
SMOKE = {"data.synthetic_train": 200, "data.synthetic_val": 40, "data.synthetic_size": 32, "data.crop_size": 32,
         "eval.size": 32, "train.epochs": 1, "train.epochs_next": 1, "train.batch_size": 16,
         "fmwiss.warmup_epochs": 0, "fmwiss.memory_per_class": 5}


# The FMWISS experiments' own defaults on the synthetic preset: 3-epoch incremental steps with a 1-epoch
# teacher warm-up, so that the default six-trial ablation finishes in minutes on two CPU cores. The
# scripts share them, so they also share step 0 (and its artifact) within one --storage.
SYNTHETIC_FMWISS = {"train.epochs_next": 3, "fmwiss.warmup_epochs": 1}


@dataclass(frozen=True)
class Experiment:
    name: str
    doc: str  # the script's docstring (shown by --help)
    grid: dict = field(default_factory=dict)  # ablation: knob -> values
    space: tuple[str, ...] = ()  # search (Optuna) instead of a grid: default space entries
    method: str = "fmwiss"
    # The experiment's own defaults on the synthetic preset (e.g. shorter steps so that the default
    # command finishes in minutes on a laptop); ignored with other presets.
    synthetic: dict = field(default_factory=dict)
    trials: int = 12  # Optuna: trials per study
    methods_flag: bool = False  # compare_methods: --methods picks the grid over methods


def build_parser(exp: Experiment) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=exp.doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke-test", action="store_true",
                   help="tiny data, 1 epoch per step, the first 2 values of each grid knob (2 Optuna trials)")
    p.add_argument("--resume", action="store_true",
                   help="resume the sweep of the same name (a plain rerun with the same flags resumes too)")
    p.add_argument("--tasks", help="comma-separated tasks, e.g. 15-5,10-10 (default: the preset's task)")
    p.add_argument("--repeats", type=int, default=1, help="seeds per grid point (train.seed, +1 each)")
    p.add_argument("--data-root", help="dataset folder (same as --set data.root=DIR)")
    p.add_argument("--storage", default="runs/sweeps",
                   help="root for results, Ray state and shared step artifacts: a folder or a pyarrow "
                        "filesystem URI (s3://bucket/path) that every node reaches (default runs/sweeps)")
    p.add_argument("--artifacts", help="shared step-artifact folder (default <storage>/artifacts for a local "
                                       "storage; with an s3:// storage give a folder all nodes mount)")
    p.add_argument("--workers", type=int, default=0,
                   help="Ray Train workers per step (0 = train inside the trial process, the default)")
    p.add_argument("--gpus-per-trial", type=float, default=0.0, help="GPUs per trial (split over its workers)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs per Train worker (or per trial "
                                                                       "with --workers 0)")
    p.add_argument("--preset", default="synthetic", help="config preset (synthetic, voc, ade, coco-voc, ...)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[], help="override a config key")
    p.add_argument("--name", help=f"sweep name (default {exp.name}, with -<preset> / -smoke appended)")
    p.add_argument("--concurrency", type=int, help="trials at once (default: what the cluster holds)")
    p.add_argument("--metric", default="miou_all", help="the objective / table metric (default miou_all)")
    p.add_argument("--objective", default="per-task", choices=("per-task", "mean"),
                   help="per-task: one result per task; mean: each trial runs every task, scored by the mean")
    if exp.methods_flag:
        p.add_argument("--methods", help="comma-separated methods (default: all registered)")
    if not exp.space:
        p.add_argument("--grid", action="append", metavar="KEY=A,B,C", default=[],
                       help="grid values for a knob (replaces the experiment's values for that knob, or "
                            "adds a dimension); repeatable")
    p.add_argument("--no-report", action="store_true",
                   help="skip the analysis report (tables, figures, report.md in <storage>/reports/<name>/)")
    if exp.space:
        p.add_argument("--space", action="append", metavar="KEY=LOW:HIGH|KEY=A,B", default=[],
                       help="search this knob too (or instead of its default range); repeatable")
        p.add_argument("--only-space", action="store_true", help="search only the --space knobs")
        p.add_argument("--trials", type=int, default=exp.trials, help=f"trials per study (default {exp.trials})")
        p.add_argument("--seed", type=int, default=0, help="TPE sampler seed")
        p.add_argument("--optuna-storage", default="", help="Optuna RDB URL for the study (sqlite:///x.db)")
        p.add_argument("--scheduler", default="fifo", choices=("fifo", "asha"), help="ASHA stops weak trials "
                                                                                      "after each step")
    return p


def config_from_args(exp: Experiment, args: argparse.Namespace):
    updates = {"method": exp.method}
    if args.preset == "synthetic":
        updates |= exp.synthetic
    if args.smoke_test:
        updates |= SMOKE if args.preset == "synthetic" else {k: v for k, v in SMOKE.items()
                                                             if not k.startswith("data.synthetic")}
    if args.data_root:
        updates["data.root"] = args.data_root
    updates |= parse_assignments(args.set)
    cfg = override(preset(args.preset), updates)
    if cfg.data.root and "://" not in cfg.data.root:  # trials run elsewhere: give them an absolute path
        from pathlib import Path

        cfg = override(cfg, {"data.root": str(Path(cfg.data.root).expanduser().resolve())})
    return cfg


def sweep_from_args(exp: Experiment, args: argparse.Namespace):
    cfg = config_from_args(exp, args)
    name = args.name or exp.name + ("" if args.preset == "synthetic" else f"-{args.preset}") + (
        "-smoke" if args.smoke_test else "")
    storage = Storage.of(args.storage)
    artifacts = args.artifacts or str(default_artifacts(storage))
    spec = SweepSpec(name=name, base=cfg, storage=storage.uri, artifacts=artifacts, workers=args.workers,
                     gpus_per_trial=args.gpus_per_trial, cpus_per_trial=args.cpus_per_worker,
                     cpus_per_worker=args.cpus_per_worker, metric=args.metric, objective=args.objective)
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip()) if args.tasks else ()
    if exp.space:
        entries = tuple(args.space) if args.only_space else exp.space + tuple(args.space)
        search = Search(kind="optuna", space=entries, num_samples=2 if args.smoke_test else args.trials,
                        seed=args.seed, optuna_storage=args.optuna_storage, scheduler=args.scheduler)
    else:
        grid = {k: v[:2] for k, v in exp.grid.items()} if args.smoke_test else dict(exp.grid)
        if exp.methods_flag and args.methods:
            grid["method"] = [m.strip() for m in args.methods.split(",") if m.strip()]
        for item in args.grid:
            key, sep, values = item.partition("=")
            if not sep or not key.strip() or not values.strip():
                raise WilssError(f"--grid takes key=a,b,c, got {item!r}: e.g. --grid pseudo.n_seeds=1,3,9")
            grid[key.strip()] = [v.strip() for v in values.split(",") if v.strip()]
        search = Search(kind="grid", grid=grid)
    return spec, search, tasks


def main(exp: Experiment, argv: list[str] | None = None) -> int:
    args = build_parser(exp).parse_args(argv)
    try:
        spec, search, tasks = sweep_from_args(exp, args)
        searched = search.kind == "optuna"
        result = run_sweep(spec, search, tasks=tasks, repeats=1 if searched else args.repeats, resume=args.resume,
                           concurrency=args.concurrency)
        keys = list(search.grid) if not searched else []
        print_summary(result, spec, keys, search)
        failed = list(result.failed)
        if searched and args.repeats > 1 and not result.rows.empty:
            failed += _repeat_best(spec, search, tasks, args, result)
        if not args.no_report and not result.rows.empty:
            _report(spec)
    except WilssError as e:
        print(f"{exp.name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{exp.name}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    if failed:
        print(f"{len(failed)} trial(s) failed: {', '.join(failed)} (logs in "
              f"{result.storage.uri_of('logs', spec.name)})", file=sys.stderr)
        return 1
    return 0


def _report(spec: SweepSpec) -> None:
    """The analysis report of this sweep (and of its ``-best`` reruns) into <storage>/reports/<name>/;
    prints the experiment's table and the paths. A failure here only warns: the sweep's rows are safe
    and ``python -m analysis.report`` can be rerun by hand."""
    storage = Storage.of(spec.storage)
    out = storage.local_path("reports", spec.name) if storage.local else None
    sources = [storage.uri_of("results", f"sweep={spec.name}")]
    try:
        sources += [s for s in (storage.uri_of("results", f"sweep={spec.name}-best"),) if _has_rows(s)]
        from analysis.render import to_markdown
        from analysis.report import report

        if out is None:  # a remote storage: write locally, next to where the script runs
            from pathlib import Path

            out = Path("runs", "reports", spec.name)
        rep = report(sources, out)
    except Exception as e:  # noqa: BLE001 - any analysis failure must not cost the sweep's exit code
        print(f"warning: the analysis report failed ({type(e).__name__}: {e}); rerun it with "
              f"python -m analysis.report {' '.join(sources)} --out {out}", file=sys.stderr)
        return
    if rep.headline is not None:
        print(f"\n{rep.headline.title} ({rep.headline.name})\n{to_markdown(rep.headline)}")
    for f in rep.figures:
        print(f"figure: {f}")
    print(f"report: {rep.markdown}")


def _has_rows(uri: str) -> bool:
    from analysis.load import list_files  # outside the try: a missing analysis package must not pass silently

    try:
        return bool(list_files(uri)[1])
    except Exception:  # noqa: BLE001 - absent folder (no -best rerun) or unreachable storage
        return False


def _repeat_best(spec: SweepSpec, search: Search, tasks: tuple[str, ...], args, result: SweepResult) -> list[str]:
    """After a search with --repeats N: the best point (per task, or over the tasks with --objective
    mean) again with N seeds, as a grid sweep ``<name>-best`` (seed 0 reuses the search's artifacts)."""
    import dataclasses

    keys = [e.split("=", 1)[0].strip() for e in search.space]
    fin = final_rows(result.rows)
    groups = [(None, fin)] if spec.objective == "mean" else list(fin.groupby("task"))
    failed = []
    for task, df in groups:
        score = df.groupby("trial_id")[spec.metric].mean()
        best = score.idxmin() if spec.mode == "min" else score.idxmax()
        point = df[df["trial_id"] == best].iloc[0]
        grid = {k: [point[k].item() if hasattr(point[k], "item") else point[k]] for k in keys}
        name = f"{spec.name}-best" + (f".{task}" if task is not None and len(groups) > 1 else "")
        print(f"\n{name}: the best point ({', '.join(f'{k}={v[0]}' for k, v in grid.items())}) with "
              f"{args.repeats} seeds")
        rspec = dataclasses.replace(spec, name=name)
        rerun = run_sweep(rspec, Search(kind="grid", grid=grid), tasks=(task,) if task else tasks,
                          repeats=args.repeats, concurrency=args.concurrency)
        print_summary(rerun, rspec, [], Search(kind="grid", grid=grid))
        failed += rerun.failed
    return failed


# --------------------------------------------------------------------------------------------------
# the closing table (the analysis package turns the rows into the paper's tables)


def _pct(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def final_rows(df):
    """The last step of every (trial, task)."""
    if df.empty:
        return df
    last = df.groupby(["trial_id", "task"])["step"].transform("max")
    return df[df["step"] == last]


METRIC_COLUMNS = {"miou_old": "old", "miou_old_nobg": "old-bg", "miou_new": "new", "miou_all": "all", "hiou": "hIoU"}


def print_summary(result: SweepResult, spec: SweepSpec, keys: list[str], search: Search) -> None:
    """The final step of each run: mIoU % per grid point (mean over seeds), or the best trials."""
    df = result.rows
    if df.empty:
        print("no rows yet")
        return
    fin = final_rows(df)
    cols = list(METRIC_COLUMNS)
    if search.kind == "grid":
        by = ["task"] + [k for k in keys if k in fin.columns and k != "data.task"]
        table = fin.groupby(by, dropna=False)[cols].mean()
        table["n"] = fin.groupby(by, dropna=False).size()
    else:
        searched = [c for c in fin.columns if any(c == e.split("=", 1)[0] for e in search.space)]
        table = fin.set_index(["task", "trial_id"])[searched + cols]
        table = table.sort_values(spec.metric, ascending=spec.mode == "min").head(10)
    rows = []
    for idx, r in table.iterrows():
        idx = idx if isinstance(idx, tuple) else (idx,)
        rows.append([str(v) for v in idx] + [_pct(r[c]) for c in cols] +
                    [str(int(r[c])) if c == "n" else _fmt(r[c]) for c in table.columns if c not in cols])
    names = [*table.index.names, *(METRIC_COLUMNS[c] for c in cols), *(c for c in table.columns if c not in cols)]
    widths = [max(len(n), *(len(r[i]) for r in rows)) for i, n in enumerate(names)]
    print(f"\n{spec.name}: final step, mIoU % (mean over {df['seed'].nunique()} seed(s) where repeated)")
    for line in [names, *rows]:
        print("  ".join(v.rjust(w) for v, w in zip(line, widths)))
    step0 = df[df["step"] == 0]
    if "cache.step_key" in df.columns and len(step0):  # one artifact per key, trained once, then reused
        built = int(step0["cache.step_key"].nunique())
        print(f"step 0: trained {built} time(s) for {len(step0)} run(s), {len(step0) - built} reused a shared "
              f"artifact")
    print(f"results: {result.storage.uri_of('results', f'sweep={spec.name}')} (Parquet, one row per trial and step)")


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
