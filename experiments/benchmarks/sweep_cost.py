"""Benchmark: the default seed-count sweep run naively vs with shared stages, its per-trial overhead on a
local Ray, and its peak memory (issue "Performance", items 1, 3 and 5).

The grid of ``experiments/ablate_seeds.py`` (FMWISS, pseudo.n_seeds in {1, 3, 5, 9, 15, 25}: 6 trials
on the synthetic 10-5 task with ``SYNTHETIC_FMWISS``) runs twice in this process tree, each on a fresh
temporary storage and a cold evidence cache:

  naive   ``SweepSpec(share_stages=False)``: every trial has its own step store and evidence cache, so
          it trains step 0 and computes the foundation evidence itself
  wilss   the default: the evidence of the step-1 images is computed once, then step 0 is trained
          once, both before the trials, with every core, and reused

Both read the same data: the synthetic benchmark and its class-presence index are prepared once
beforehand (in ``--data-cache``, default the wilss cache) and are not part of either wall time.

Printed: both wall times and naive / wilss; the stage times read from the rows (step-0 builds,
evidence, step-1 builds) and the wall times and ratio they predict; per trial, the time from its start
to its first training iteration and what it spent before it; the sum of the trials' compute vs the
wall time; the peak RSS of the whole process tree (driver, Ray's processes and the trial workers).

    OMP_NUM_THREADS=1 python experiments/benchmarks/sweep_cost.py                  # the default sweep
    OMP_NUM_THREADS=1 python experiments/benchmarks/sweep_cost.py --smoke-test     # tiny data, 2 trials
    OMP_NUM_THREADS=1 python experiments/benchmarks/sweep_cost.py --concurrency 1 --keep runs/sweep-cost

The numbers come from the synthetic benchmark (tiny models at 64 px): they show where a sweep's time
goes and what sharing saves, not what a VOC sweep costs.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Self

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # experiments/: the ablation's declaration

import pandas as pd
from ablate_seeds import EXPERIMENT

from wilss.config import override
from wilss.data.datasets import default_cache_dir, prepare
from wilss.launch.experiment import build_parser, sweep_from_args
from wilss.launch.storage import Storage, log_dir
from wilss.launch.sweep import run_sweep
from wilss.launch.trial import link_shared_data

# --------------------------------------------------------------------------------------------------
# memory: the RSS of this process and all its descendants (Ray's GCS, raylet, workers), from /proc


def _tree_rss() -> tuple[int, int, int]:
    """(sum of VmRSS in bytes, number of processes, largest single VmRSS) over this process's tree."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    total = n = largest = 0
    todo = [os.getpid()]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                    total, n, largest = total + rss, n + 1, max(largest, rss)
                    break
        except OSError:
            continue
    return total, n, largest


class RssSampler:
    """Samples the process tree's RSS every ``every`` seconds in a thread; keeps the peak."""

    def __init__(self, every: float = 0.5):
        self.every, self.peak, self.peak_procs, self.peak_single = every, 0, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total, n, largest = _tree_rss()
            if total > self.peak:
                self.peak, self.peak_procs = total, n
            self.peak_single = max(self.peak_single, largest)
            self._stop.wait(self.every)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------------------------------
# trial timelines from the trial logs ("HH:MM:SS.mmm message" lines)


@dataclasses.dataclass
class Timeline:
    trial_id: str
    start: float  # trial_main's first log line (the trial's process is up and has its parameters)
    ready: float | None  # "step t: classes ..." of its first trained step: the first training iteration follows
    ready_step: int | None
    end: float  # its last log line


LINE = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) (.*)$")


def _timeline(path: Path, day: datetime) -> Timeline | None:
    times, ready, ready_step = [], None, None
    for line in path.read_text(errors="replace").splitlines():
        m = LINE.match(line)
        if not m:
            continue
        h, mi, s, ms, msg = int(m[1]), int(m[2]), int(m[3]), int(m[4]), m[5]
        t = (day + timedelta(hours=h, minutes=mi, seconds=s, milliseconds=ms)).timestamp()
        if times and t < times[-1] - 3600:  # past midnight
            day, t = day + timedelta(days=1), t + 86400
        times.append(t)
        step = re.match(r"step (\d+): classes", msg)
        if step and ready is None:
            ready, ready_step = t, int(step[1])
    return Timeline(path.stem, times[0], ready, ready_step, times[-1]) if times else None


def timelines(storage: Storage, name: str, started: float, shared: bool = False) -> list[Timeline]:
    """The trials' timelines, or with ``shared`` those of the steps the sweep built before its trials."""
    day = datetime.fromtimestamp(started).replace(hour=0, minute=0, second=0, microsecond=0)
    paths = [p for p in sorted(log_dir(storage, name).glob("*.log")) if p.name.startswith("shared-") == shared]
    found = [_timeline(p, day) for p in paths]
    return sorted((t for t in found if t), key=lambda t: t.start)


def max_overlap(tls: list[Timeline]) -> int:
    events = sorted([(t.start, 1) for t in tls] + [(t.end, -1) for t in tls])
    n = best = 0
    for _, d in events:
        n += d
        best = max(best, n)
    return best


# --------------------------------------------------------------------------------------------------
# one sweep


@dataclasses.dataclass
class Run:
    mode: str
    wall: float
    rows: object  # DataFrame
    tls: list[Timeline]
    pre: list[Timeline]  # shared evidence and steps built before the trials
    started: float
    rss: RssSampler


def run_one(mode: str, root: Path, data_cache: Path, args) -> Run:
    argv = ["--storage", str(root / mode / "storage"), "--no-report"] + (["--smoke-test"] if args.smoke_test else [])
    spec, search, tasks = sweep_from_args(EXPERIMENT, build_parser(EXPERIMENT).parse_args(argv))
    cache = root / mode / "cache"  # cold: no evidence; the data linked from the shared cache
    link_shared_data(data_cache, cache)
    spec = dataclasses.replace(spec, base=override(spec.base, {"data.cache_dir": str(cache)}),
                               share_stages=mode == "wilss")
    print(f"\n=== {mode}: {'shared stages' if spec.share_stages else 'every trial on its own'} ===", flush=True)
    started = time.time()
    with RssSampler() as rss:
        result = run_sweep(spec, search, tasks=tasks, concurrency=args.concurrency)
    wall = time.time() - started
    if result.failed:
        raise SystemExit(f"{mode}: {len(result.failed)} trial(s) failed; logs in "
                         f"{log_dir(result.storage, spec.name)} (rerun with --keep DIR to look at them)")
    return Run(mode, wall, result.rows, timelines(result.storage, spec.name, started),
               timelines(result.storage, spec.name, started, shared=True), started, rss)


# --------------------------------------------------------------------------------------------------
# the report


def _col(df, name, default=float("nan")):
    return df[name] if name in df.columns else default


def builds(df):
    """One row per step artifact (``cache.step_key``) with what building it took: the builder's own row,
    or, for an artifact no trial built (the sweep built it before the trials), a row that reused it,
    which carries the builder's columns and its time as ``time.build_s``."""
    hit = df["cache.step_hit"].fillna(False).astype(bool)
    own = df[~hit]
    rest = df[hit & ~df["cache.step_key"].isin(own["cache.step_key"])].drop_duplicates("cache.step_key").copy()
    if rest.empty:
        return own
    rest["time.step_s"] = rest["time.build_s"]
    return pd.concat([own, rest], ignore_index=True)


def stages(run: Run) -> dict:
    """Stage times from the built steps (``builds``)."""
    built = builds(run.rows)
    s0, s1 = built[built["step"] == 0], built[built["step"] > 0]
    ev = _col(s1, "time.evidence_s", 0.0)
    computed = s1[_col(s1, "cache.evidence_misses", 0) > 0]
    ev_n, ev_s = len(computed), float(_col(computed, "time.evidence_s", 0.0).sum())
    before = [p for p in run.pre if p.trial_id.startswith("shared-evidence-")]
    if before:  # the sweep computed it before the trials (its log), the trials only read it
        ev_n, ev_s = ev_n + len(before), ev_s + sum(p.end - p.start for p in before)
    return {"step0_n": len(s0), "step0_s": float(s0["time.step_s"].sum()),
            "ev_n": ev_n, "ev_s": ev_s,
            "ev_all_s": float(ev.sum()),
            "step1_n": len(s1), "step1_s": float((s1["time.step_s"] - ev).sum()),
            "compute_s": float(built["time.step_s"].sum()),
            # what the trials themselves built (not the steps the sweep built before them)
            "trial_compute_s": float(run.rows.loc[~run.rows["cache.step_hit"].fillna(False).astype(bool),
                                                  "time.step_s"].sum())}


def overheads(run: Run) -> list[dict]:
    """Per trial: start -> first training iteration, less what it legitimately spent before it
    (waiting for a shared step another trial was building, evidence computed or waited for)."""
    df, out = run.rows, []
    for tl in run.tls:
        mine = df[df["trial_id"] == tl.trial_id]
        if tl.ready is None:  # trained nothing (every step reused)
            continue
        hits = mine[(mine["step"] < tl.ready_step) & mine["cache.step_hit"].fillna(False).astype(bool)]
        waited = float(hits["time.step_s"].sum())
        first = mine[mine["step"] == tl.ready_step]
        evidence = float(_col(first, "time.evidence_s", 0.0).fillna(0).sum())
        to_iter = tl.ready - tl.start
        out.append({"trial": tl.trial_id, "to_iter": to_iter, "waited": waited, "evidence": evidence,
                    "setup": to_iter - waited - evidence, "step": tl.ready_step})
    return out


def launch_gaps(run: Run, slots: int) -> tuple[float, list[float]]:
    """(sweep start -> first trial start: Ray start-up and the first trial process, less the shared
    steps built before the trials), and for every trial that waited for a slot, the time from the slot
    freeing (a trial's last log line) to its start."""
    tls = run.tls
    first = tls[0].start - run.started - sum(p.end - p.start for p in run.pre)
    gaps = []
    for i, tl in enumerate(tls[slots:], start=slots):
        ended = [t.end for t in tls[:i] if t.end <= tl.start]
        if ended:
            gaps.append(tl.start - max(ended))
    return first, gaps


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def report(naive: Run, wilss: Run, prep_s: float) -> None:
    n = len(naive.tls)
    print(f"\n=== sweep cost: {n} trials, data prepared beforehand in {prep_s:.1f}s (not counted) ===")
    print(f"naive (each trial builds step 0 and its evidence): {naive.wall:7.1f}s wall")
    print(f"wilss (shared stages):                              {wilss.wall:7.1f}s wall")
    print(f"naive / wilss: {naive.wall / wilss.wall:.2f}x   (target >= 3x on 2 cores)")

    print("\nstage times from the rows (built steps only; seconds summed over the trials that ran them):")
    print(f"  {'':6} {'step-0 builds':>18} {'evidence computed':>20} {'step-1 builds (w/o evidence)':>30}")
    st = {}
    for run in (naive, wilss):
        s = st[run.mode] = stages(run)
        print(f"  {run.mode:6} {s['step0_n']:>3} x {s['step0_s'] / max(s['step0_n'], 1):5.1f}s = {s['step0_s']:5.1f}s"
              f" {s['ev_n']:>5} x {s['ev_s'] / max(s['ev_n'], 1):5.1f}s = {s['ev_s']:5.1f}s"
              f" {s['step1_n']:>14} x {s['step1_s'] / max(s['step1_n'], 1):5.1f}s = {s['step1_s']:5.1f}s")
    c = max_overlap(wilss.tls)
    s = st["naive"]
    s0, ev, s1 = s["step0_s"] / max(s["step0_n"], 1), s["ev_s"] / max(s["ev_n"], 1), s["step1_s"] / max(s["step1_n"], 1)
    w = st["wilss"]  # step 0 and the evidence: built before the trials, on every core
    w0, wev = w["step0_s"] / max(w["step0_n"], 1), w["ev_s"] / max(w["ev_n"], 1)
    rounds = math.ceil(n / c)
    model_naive, model_wilss = rounds * (s0 + ev + s1), w0 + wev + rounds * s1
    print(f"\nmodel (per-trial stage means of the naive run, {c} trials at once, so {rounds} rounds; the wilss "
          f"step 0 as measured):")
    print(f"  naive ~ {rounds} x (step0 {s0:.1f} + evidence {ev:.1f} + step1 {s1:.1f}) = {model_naive:.1f}s"
          f"  (measured {naive.wall:.1f}s)")
    print(f"  wilss ~ step0 {w0:.1f} + evidence {wev:.1f} + {rounds} x step1 {s1:.1f}   = {model_wilss:.1f}s"
          f"  (measured {wilss.wall:.1f}s; both built before the trials with all {c} cores)")
    print(f"  ideal ratio {model_naive / model_wilss:.2f}x; with unlimited trials it tends to "
          f"(step0 + evidence + step1) / step1 = {(s0 + ev + s1) / s1:.2f}x")
    print("  the measured walls exceed the models by the per-sweep and per-trial overheads below")

    for run in (naive, wilss):
        slots = max_overlap(run.tls)
        rows = overheads(run)
        first, gaps = launch_gaps(run, slots)
        busy = sum(t.end - t.start for t in run.tls)
        compute, pre = st[run.mode]["trial_compute_s"], sum(p.end - p.start for p in run.pre)
        print(f"\n=== {run.mode}: per-trial overhead ({slots} trials at once) ===")
        print(f"  {'trial':<12} {'start->1st iter':>15} {'waited shared':>14} {'evidence':>9} {'setup':>7}")
        for r in rows:
            print(f"  {r['trial']:<12} {r['to_iter']:14.1f}s {r['waited']:13.1f}s {r['evidence']:8.1f}s "
                  f"{r['setup']:6.1f}s  (step {r['step']})")
        print(f"  in-trial setup before the first iteration (data from cache, model, checkpoint, loader): "
              f"mean {_mean(r['setup'] for r in rows):.1f}s, max {max((r['setup'] for r in rows), default=0):.1f}s")
        for p in run.pre:
            what = "the evidence" if p.trial_id.startswith("shared-evidence-") else "shared steps"
            print(f"  {what} built before the trials: {p.end - p.start:.1f}s (from {p.start - run.started:.1f}s "
                  f"after the sweep's start)")
        print(f"  sweep start -> first trial running (Ray start-up, trial process; less the shared build): "
              f"{first:.1f}s")
        if gaps:
            print(f"  a freed slot -> the next trial running (Tune scheduling, trial process): "
                  f"mean {_mean(gaps):.1f}s, max {max(gaps):.1f}s")
        last = run.started + run.wall - max(t.end for t in run.tls)
        waited = sum(r["waited"] for r in rows)
        print(f"  last trial done -> sweep returned (Tune wrap-up, Ray shutdown): {last:.1f}s")
        used = compute + pre * slots  # the shared build held every slot
        print(f"  wall {run.wall:.1f}s x {slots} slots = {run.wall * slots:.1f} slot-s; trials alive {busy:.1f}s; "
              f"their compute (the steps they built, time.step_s) {compute:.1f}s"
              f"{f' + the shared build {pre:.1f}s x {slots} slots' if pre else ''} = {used / (run.wall * slots):.0%} "
              f"of the slots")
        per_trial = (busy - compute - waited) / n + (_mean(gaps) if gaps else 0.0) * len(gaps) / n
        print(f"  per-trial overhead: alive but not computing nor waiting for a shared stage "
              f"{(busy - compute - waited) / n:.1f}s + launch gap {sum(gaps) / n:.1f}s = {per_trial:.1f}s a trial "
              f"(target < 5s); per sweep: {first + last:.1f}s of start-up and shutdown")

    print("\n=== peak RSS of the process tree (driver + Ray + trial processes, sampled every 0.5 s) ===")
    for run in (naive, wilss):
        r = run.rss
        print(f"  {run.mode:6} {r.peak / 2**30:.2f} GiB over {r.peak_procs} processes "
              f"(largest single process {r.peak_single / 2**20:.0f} MiB)")
    print("  RSS counts shared pages (torch's libraries, Ray's object store) once per process: an upper bound")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke-test", action="store_true", help="tiny data (SMOKE), the first 2 grid values")
    p.add_argument("--concurrency", type=int, help="trials at once (default: what the local Ray holds)")
    p.add_argument("--keep", metavar="DIR", help="keep both storages and caches in DIR (default: a temp folder)")
    p.add_argument("--data-cache", help=f"where the shared data is prepared (default {default_cache_dir()})")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    data_cache = Path(args.data_cache or default_cache_dir())
    spec, _, _ = sweep_from_args(EXPERIMENT, build_parser(EXPERIMENT).parse_args(
        ["--smoke-test"] if args.smoke_test else []))
    t0 = time.perf_counter()
    prepare(spec.base.data, data_cache, progress=False)  # the synthetic benchmark, class presence
    prep_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="wilss-sweep-cost-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        if args.keep and root.exists() and any(root.iterdir()):
            raise SystemExit(f"--keep {root} is not empty: the caches must start cold")
        naive = run_one("naive", root, data_cache, args)
        wilss = run_one("wilss", root, data_cache, args)
        report(naive, wilss, prep_s)
        if args.keep:
            print(f"\nstorages and caches kept in {root}")


if __name__ == "__main__":
    main()
