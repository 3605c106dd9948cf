"""A one-line progress report while a sweep runs: trials done / running / pending, best so far, ETA."""

from __future__ import annotations

import math
import time

from ray.tune import Callback


def _fmt_s(s: float) -> str:
    s = round(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _fmt_v(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class Progress(Callback):
    """Prints after every step report and every finished trial of a Tune experiment."""

    def __init__(self, name: str, total: int, metric: str, mode: str, keys: tuple[str, ...] = (),
                 started: float | None = None):
        """started: ``time.monotonic()`` at the sweep's start (what "elapsed" counts from, so it includes
        the stages built before the trials); the ETA extrapolates from the trials' own time."""
        self.name, self.total, self.metric, self.mode, self.keys = name, total, metric, mode, keys
        self.started = started
        self.setup()

    def setup(self, **info) -> None:  # also called when a restored experiment starts again
        self.t0 = time.monotonic()
        self.finished_here = 0
        self.best: tuple[float, str] | None = None

    def _consider(self, trial) -> None:
        result = trial.last_result or {}
        value = result.get("objective")
        if not isinstance(value, (int, float)) or math.isnan(value):
            return
        better = self.best is None or (value > self.best[0] if self.mode == "max" else value < self.best[0])
        if better:
            cfg = trial.config or {}
            what = ", ".join(f"{k}={_fmt_v(cfg[k])}" for k in self.keys if k in cfg) or trial.trial_id
            self.best = (value, what)

    def _line(self, trials, event: str, ending=None) -> None:
        # ``ending``: the trial being completed, whose status Tune updates after the callback
        done = sum(t.status in ("TERMINATED", "ERROR") or t is ending for t in trials)
        running = sum(t.status == "RUNNING" and t is not ending for t in trials)
        pending = max(0, self.total - done - running)
        for t in trials:
            if t.status == "TERMINATED" or t is ending:
                self._consider(t)
        now = time.monotonic()
        elapsed = now - (self.started if self.started is not None else self.t0)
        eta = "?"
        if self.finished_here:
            eta = _fmt_s((now - self.t0) / self.finished_here * (self.total - done)) if done < self.total else "0m00s"
        best = f"best {self.metric} {100 * self.best[0]:.1f} ({self.best[1]})" if self.best else "best -"
        print(f"[{self.name}] {done}/{self.total} done, {running} running, {pending} pending | {best} | "
              f"{_fmt_s(elapsed)} elapsed, ETA {eta} | {event}", flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        value = result.get(self.metric)
        shown = f"{100 * value:.1f}" if isinstance(value, float) else "-"
        hit = " (shared artifact)" if result.get("step_hit") else ""
        again = " (done before)" if result.get("resumed") else ""
        self._line(trials, f"{trial.trial_id} {result.get('task')} step {result.get('step')}: "
                           f"{self.metric} {shown}{hit}{again}")

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.finished_here += 1
        self._line(trials, f"{trial.trial_id} finished", ending=trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.finished_here += 1
        self._line(trials, f"{trial.trial_id} FAILED", ending=trial)
