"""Walk the steps of one incremental run, each step built at most once (ray-free).

For every step t the walker
  1. skips it when its result row exists and its artifact is still there (a resumed run),
  2. otherwise takes the artifact's lock: a step another run built (same ``step_key``) is reused,
     else ``build`` trains it (in this process, or on a Ray Train worker group) into a temp folder
     that is published atomically,
  3. writes the step's row (config, metrics, cache columns, the caller's extra columns) and hands
     it to ``on_row``.
Step t starts from the checkpoint of step t-1, so a step can run anywhere that can read a file.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from wilss.artifacts import StepStore, step_key
from wilss.atomic import write_text
from wilss.config import Config
from wilss.data.tasks import get_task
from wilss.methods import create_method
from wilss.results import make_row

# build(cfg, step, previous checkpoint or None, checkpoint to write) -> the step's measured columns
Build = Callable[[Config, int, Path | None, Path], dict]


@dataclass
class RowSink:
    """Where the rows of one run go: ``read(step)`` (None when absent) and ``write(step, row)``."""

    read: Callable[[int], dict | None]
    write: Callable[[int, dict], None]


def ensure_step(cfg: Config, step: int, key: str, build: Build, previous: Path | None, store: StepStore,
                log: Callable[[str], None] = print) -> dict:
    """The artifact ``key`` of ``step`` in ``store``: reused when there, else built and published.

    Returns the step's columns: those it was built with, ``cache.step_hit`` (True when reused) and,
    when reused, ``time.build_s`` (what building it took) and ``time.step_s`` (the wait for it).
    """
    t0 = time.perf_counter()
    with store.lock(key):  # another run building this step: wait for it, then reuse it
        hit = store.get(key)
        if hit:
            built = json.loads((hit / "row.json").read_text())
            log(f"step {step}: reused the shared artifact {key} (mIoU all {built['miou_all']:.3f})")
            return built | {"cache.step_hit": True, "time.build_s": built.get("time.step_s", float("nan")),
                            "time.step_s": time.perf_counter() - t0}
        with store.publish(key) as tmp:
            cols = build(cfg, step, previous, tmp / "checkpoint.pt") | {"cache.step_hit": False}
            write_text(tmp / "row.json", json.dumps(cols))
        return cols


def run_steps(cfg: Config, build: Build, sink: RowSink, store: StepStore, *, ids: dict | None = None,
              extra: Callable[[], dict] | None = None, on_row: Callable[[dict, bool], None] | None = None,
              log: Callable[[str], None] = print) -> list[dict]:
    """Every step of ``cfg``'s task; returns the rows. ``on_row(row, resumed)`` follows each step.

    extra(): columns added to each newly written row (e.g. where it ran).
    """
    method = create_method(cfg.method)
    task = get_task(cfg.data.dataset, cfg.data.task)
    steps = [task.n_steps - 1] if method.joint else list(range(task.n_steps))
    rows, previous = [], None
    for step in steps:
        key = step_key(cfg, step, method.sections, method.step0_keys)
        done = sink.read(step)
        if done is not None and store.get(key):
            log(f"step {step}: done before (row and artifact {key} exist), skipped")
            previous = store.get(key) / "checkpoint.pt"
            rows.append(done)
            if on_row:
                on_row(done, True)
            continue
        cols = ensure_step(cfg, step, key, build, previous, store, log)
        previous = store.get(key) / "checkpoint.pt"
        row = (make_row(cfg, step=step, metrics={}, timings={}, **(ids or {})) | cols
               | {"cache.step_key": key} | (extra() if extra else {}))
        sink.write(step, row)
        rows.append(row)
        if on_row:
            on_row(row, False)
    return rows
