"""The Tune trial: one (config, seed) incremental run, walking its task's steps (RAY.md §5.1).

The trial is the driver of its steps. With ``workers == 0`` it trains each step in its own process
(the trial actor holds the CPUs or GPU it trains with): the fast path on a laptop, where local-mode
Train cannot run inside Tune (RAY.md P18). With ``workers >= 1`` it holds no CPU (a sliver of the
``TRAIN_DRIVER`` resource) and runs each step as one ``TorchTrainer.fit()`` on that many workers.

Either way, steps whose row and artifact exist are skipped (a restored trial picks up where it
stopped), a step another trial built is reused (``wilss.launch.steps``), and the trial reports once
per step to Tune: ``inc_step`` (monotonic across the trial's tasks), the step's metric, and
``objective`` (the latest metric of each task, averaged over the trial's tasks).

``share_stages=False`` is the naive baseline (``experiments/benchmarks/sweep_cost.py``): every trial
gets its own step store and evidence cache (``trial_paths``), so it trains step 0 and computes the
foundation evidence itself; only the data (the synthetic benchmark, the class-presence index) stays shared.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from wilss.artifacts import StepStore
from wilss.config import Config, override
from wilss.data.tasks import get_task
from wilss.launch.steps import RowSink, run_steps
from wilss.launch.storage import Storage, log_dir, read_row_at, row_path, write_row_at
from wilss.methods import create_method

METRICS = ("miou_all", "miou_old", "miou_new", "miou_old_nobg", "miou_all_nobg", "hiou")


@dataclass(frozen=True)
class SweepSpec:
    """Everything a trial needs besides its own parameters."""

    name: str
    base: Config
    storage: str  # Storage.uri
    artifacts: str  # StepStore folder (POSIX; shared by the nodes for cross-node reuse)
    workers: int = 0  # 0: train in the trial process; N: Ray Train with N workers per step
    gpus_per_trial: float = 0.0
    cpus_per_trial: float = 1.0  # workers == 0
    cpus_per_worker: float = 1.0  # workers >= 1
    tasks: tuple[str, ...] = ()  # objective over several tasks: every trial walks all of them
    metric: str = "miou_all"
    mode: str = "max"
    objective: str = "per-task"  # or "mean"
    share_stages: bool = True  # False: each trial builds its own steps and evidence (the naive baseline)

    def trial_tasks(self, cfg: Config) -> tuple[str, ...]:
        return self.tasks if self.objective == "mean" and self.tasks else (cfg.data.task,)


def n_reports(cfg: Config, tasks: tuple[str, ...]) -> int:
    """How many step reports a trial makes (its steps over all its tasks)."""
    joint = create_method(cfg.method).joint
    return sum(1 if joint else get_task(cfg.data.dataset, t).n_steps for t in tasks)


# What a naive trial still reads from the shared cache: data, not stages (its evidence is its own).
SHARED_DATA = ("synthetic", "classsets")


def shared_cache(cfg: Config) -> str:
    """The cache folder every run on the machine shares (evidence, synthetic data, class presence)."""
    from wilss.data.datasets import default_cache_dir

    return cfg.data.cache_dir or str(default_cache_dir())


def trial_paths(spec: SweepSpec, cfg: Config, trial_id: str) -> tuple[str, str]:
    """(step-artifact folder, cache folder) of one trial: the sweep's shared ones, or with
    ``share_stages=False`` its own ``<artifacts>/<trial_id>`` and ``<artifacts>/<trial_id>/cache``."""
    if spec.share_stages:
        return spec.artifacts, shared_cache(cfg)
    own = str(Path(spec.artifacts, trial_id))
    return own, str(Path(own, "cache"))


def link_shared_data(shared: str | Path, cache: str | Path) -> None:
    """Make a trial's own cache read the data (``SHARED_DATA``) from the shared cache."""
    for name in SHARED_DATA:
        target, link = Path(shared, name).resolve(), Path(cache, name)
        target.mkdir(parents=True, exist_ok=True)
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(target, target_is_directory=True)


def trial_main(params: dict, spec: SweepSpec) -> None:
    """The Tune function trainable (wrapped with ``tune.with_parameters(..., spec=...)``)."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    cfg = override(spec.base, params)
    artifacts, cache = trial_paths(spec, cfg, trial_id)
    if not spec.share_stages:
        link_shared_data(shared_cache(cfg), cache)
        cfg = override(cfg, {"data.cache_dir": cache})
    storage, store = Storage(spec.storage), StepStore(artifacts)
    with log_file(storage, spec.name, trial_id) as log:
        _walk(spec, params, cfg, spec.trial_tasks(cfg), storage, store, trial_id, log)


@contextlib.contextmanager
def log_file(storage: Storage, sweep: str, name: str) -> Iterator[Callable[[str], None]]:
    """``<logs>/<sweep>/<name>.log``: everything printed meanwhile (log lines, progress bars, warnings)
    goes there, and the yielded ``log`` writes timestamped lines; the driver's console shows the
    sweep's progress lines only."""
    logs = log_dir(storage, sweep)
    logs.mkdir(parents=True, exist_ok=True)
    with (open(logs / f"{name}.log", "a", buffering=1) as logfile, contextlib.redirect_stdout(logfile),
          contextlib.redirect_stderr(logfile)):

        def log(msg: str) -> None:
            logfile.write(f"{datetime.now():%H:%M:%S.%f}"[:-3] + f" {msg}\n")

        yield log


def local_build(log: Callable[[str], None]):
    """A step builder that trains in this process (``wilss.launch.steps.Build``)."""
    from wilss.launch.cluster import node_columns
    from wilss.protocol import run_step

    def build(cfg: Config, step: int, previous: Path | None, checkpoint: Path) -> dict:
        return run_step(cfg, step, checkpoint, previous=previous, log=log) | node_columns()

    return build


def _walk(spec: SweepSpec, params: dict, cfg: Config, tasks: tuple[str, ...], storage: Storage, store: StepStore,
          trial_id: str, log) -> None:
    import torch
    from ray import tune

    from wilss.launch.cluster import node_columns

    here = node_columns()
    tags = {"ray.trial_node_id": here["ray.node_id"], "ray.trial_node_ip": here["ray.node_ip"],
            "ray.workers": spec.workers}
    if spec.workers == 0:
        torch.set_num_threads(max(1, int(spec.cpus_per_trial)))
    total, latest, inc = n_reports(cfg, tasks), {}, 0
    log(f"trial {trial_id} of {spec.name}: {params} on {here['ray.node_ip']}, tasks {list(tasks)}")
    try:
        for task in tasks:
            tcfg = override(cfg, {"data.task": task}) if task != cfg.data.task else cfg
            name = get_task(tcfg.data.dataset, task).name

            def on_row(row: dict, resumed: bool, task=name) -> None:
                nonlocal inc
                inc += 1
                latest[task] = float(row[spec.metric])
                tune.report({"inc_step": inc, "task": task, "step": int(row["step"]), spec.metric: latest[task],
                             "objective": sum(latest.values()) / len(latest), "resumed": resumed,
                             "step_hit": bool(row.get("cache.step_hit", False)), "final": inc == total})

            sink = RowSink(
                read=lambda t, task=name: read_row_at(storage, row_path(storage, spec.name, task, trial_id, t)),
                write=lambda t, row, task=name: write_row_at(storage, row_path(storage, spec.name, task,
                                                                                trial_id, t), row))
            run_steps(tcfg, _builder(spec, storage, trial_id, name, log), sink, store,
                      ids={"sweep": spec.name, "trial_id": trial_id}, extra=lambda: tags, on_row=on_row, log=log)
    except Exception as e:
        log(f"failed: {type(e).__name__}: {e}")
        raise


def _builder(spec: SweepSpec, storage: Storage, trial_id: str, task: str, log):
    """How this trial builds a step: in its own process, or on a Ray Train worker group."""
    if spec.workers == 0:
        return local_build(log)

    from wilss.launch.train import TrainSpec, train_step

    tspec = TrainSpec(workers=spec.workers, storage_path=storage.uri_of("ray"), use_gpu=spec.gpus_per_trial > 0,
                      cpus_per_worker=spec.cpus_per_worker,
                      gpus_per_worker=spec.gpus_per_trial / spec.workers if spec.gpus_per_trial else 0.0)

    def build(cfg: Config, step: int, previous: Path | None, checkpoint: Path) -> dict:
        name = f"{spec.name}-train/{trial_id}/{task}/step{step}"
        log(f"step {step}: Ray Train run {name} on {spec.workers} workers")
        return train_step(cfg, step, previous, checkpoint, spec=tspec, name=name)

    return build
