"""Benchmark: one protocol on Ray Train with 1 vs 2 workers (gloo on CPU), throughput side by side
(issue "Performance", item 4, CPU part).

Runs ``wilss run --workers N`` (``wilss.launch.train.run_distributed``) for each N on the same config in
one process (each with a fresh output folder), then prints, per step, the training time measured inside
the step (``time.train_s``: the epochs, without the worker group's start-up), the images per second
(``n_train_images`` x epochs / train time) and its ratio against the first count, and the whole run's
wall time on the driver (Ray and worker-group start-up included). ``train.batch_size`` is the global batch, so every N runs the same
schedule.

    python experiments/benchmarks/train_scaling.py                    # synthetic, finetune, workers 1 and 2
    python experiments/benchmarks/train_scaling.py --workers 1,2,4 --set train.epochs=4
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from wilss.config import override, parse_assignments
from wilss.presets import preset

# Short, but long enough that an epoch is much more than the all-reduce latency.
DEFAULTS = {"method": "finetune", "train.epochs": 3, "train.epochs_next": 2}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts (default 1,2)")
    p.add_argument("--preset", default="synthetic")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    from wilss.launch.train import run_distributed

    cfg = override(preset(args.preset), DEFAULTS | parse_assignments(args.set))
    counts = [int(w) for w in args.workers.split(",")]
    results: dict[int, tuple[list[dict], float]] = {}
    with tempfile.TemporaryDirectory(prefix="wilss-scaling-") as tmp:
        for n in counts:
            start = time.perf_counter()
            rows = run_distributed(cfg, Path(tmp, f"w{n}"), n, log=lambda msg: None)
            results[n] = (rows, time.perf_counter() - start)
    base_rows, base_wall = results[counts[0]]
    print(f"{cfg.method} on {cfg.data.dataset} {cfg.data.task}, global batch {cfg.train.batch_size}; "
          f"epochs {cfg.train.epochs} / {cfg.train.epochs_next}")
    print(f"{'workers':>7} {'step':>4} {'train s':>8} {'img/s':>7} {'x img/s':>8}")
    for n in counts:
        rows, wall = results[n]
        for row, base in zip(rows, base_rows):
            epochs = cfg.train.epochs if int(row["step"]) == 0 else cfg.train.epochs_next
            ips = row["n_train_images"] * epochs / row["time.train_s"]
            base_ips = base["n_train_images"] * epochs / base["time.train_s"]
            print(f"{n:>7} {int(row['step']):>4} {row['time.train_s']:>8.1f} {ips:>7.1f} {ips / base_ips:>7.2f}x")
        print(f"{n:>7} total wall {wall:.1f}s ({wall / base_wall:.2f}x of {counts[0]} worker(s))")


if __name__ == "__main__":
    main()
